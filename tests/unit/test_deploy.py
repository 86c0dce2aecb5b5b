"""Deployment files: the kustomize build, the compose file and the Dockerfile, checked offline.

No cluster and no container engine: `kubectl kustomize` renders deploy/k8s (from a copy
with a placeholder token, so no real token is needed or made), and each check reads the
objects. Container command lines go through the real role entry points (`python -m
pop_node ...` with `run` replaced by a capture), so a flag the nodes do not accept, or an
address that does not match the topology's node list, fails here rather than in a pod.
Strict schema validation is `make check-deploy`'s job.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from edge.v1 import control_plane_pb2, origin_pb2, pop_pb2
from edgepop.config import NodeConfig
from edgepop.topology import default_topology, load_topology, parse_topology
from pop_node.node import PopConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PLACEHOLDER_TOKEN = "placeholder-token-for-tests"
NAMESPACE = "edgepop"
# The role's own gRPC service: SERVING only once the node finished starting.
ROLE_SERVICES = {
    "control_plane": control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlane"].full_name,
    "origin_node": origin_pb2.DESCRIPTOR.services_by_name["Origin"].full_name,
    "pop_node": pop_pb2.DESCRIPTOR.services_by_name["Pop"].full_name,
}
ROLE_NODE_CLASSES = {
    "control_plane": "ControlPlane",
    "origin_node": "OriginNode",
    "pop_node": "PopNode",
}
ROLE_OF_MODULE = {"control_plane": "control_plane", "origin_node": "origin", "pop_node": "pop"}
IMAGE_UID = 10001


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgepop_deploy_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def k8s_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The kustomize build of deploy/k8s, with a placeholder token instead of the real one."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (make check-deploy installs it)")
    source = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, source, ignore=shutil.ignore_patterns("cluster.token", "__pycache__"))
    (source / "cluster.token").write_text(PLACEHOLDER_TOKEN + "\n")
    built = subprocess.run(
        [kubectl, "kustomize", str(source)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return [document for document in yaml.safe_load_all(built.stdout) if document]


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = list(_of_kind(objects, kind).values())
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, statefulset in _of_kind(objects, "StatefulSet").items():
        for container in statefulset["spec"]["template"]["spec"]["containers"]:
            yield name, container


def _pod_names(statefulset: dict[str, Any]) -> list[str]:
    spec = statefulset["spec"]
    start = spec.get("ordinals", {}).get("start", 0)
    return [
        f"{statefulset['metadata']['name']}-{i}" for i in range(start, start + spec["replicas"])
    ]


def _port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    return int(ports[name])


def _nodes_list(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config_map = _one(objects, "ConfigMap")
    nodes: list[dict[str, Any]] = yaml.safe_load(config_map["data"]["nodes.yaml"])["nodes"]
    return nodes


# -- the objects ---------------------------------------------------------------------------


def test_kustomize_builds_every_object_of_the_default_cluster(
    k8s_objects: list[dict[str, Any]],
) -> None:
    pop_regions = {region.name for region in default_topology().pop_regions()}
    assert set(_of_kind(k8s_objects, "Namespace")) == {NAMESPACE}
    assert set(_of_kind(k8s_objects, "StatefulSet")) == {"control-plane", "origin"} | pop_regions
    assert set(_of_kind(k8s_objects, "PodMonitor")) == {"control-plane", "origin", "pop"}
    assert set(_of_kind(k8s_objects, "PodDisruptionBudget")) == pop_regions
    assert _one(k8s_objects, "ConfigMap")["metadata"]["name"].startswith("topology-")
    assert _one(k8s_objects, "Secret")["metadata"]["name"].startswith("cluster-token-")
    for document in k8s_objects:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]["name"]


def test_every_statefulset_has_a_headless_service_that_publishes_starting_pods(
    k8s_objects: list[dict[str, Any]],
) -> None:
    services = _of_kind(k8s_objects, "Service")
    for name, statefulset in _of_kind(k8s_objects, "StatefulSet").items():
        service = services[statefulset["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", name
        # Peers must reach a node before kubelet calls it ready (it registers first).
        assert service["spec"]["publishNotReadyAddresses"] is True, name
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name


def test_pop_statefulsets_run_the_topology_node_names(k8s_objects: list[dict[str, Any]]) -> None:
    topology = default_topology()
    statefulsets = _of_kind(k8s_objects, "StatefulSet")
    for region in topology.pop_regions():
        statefulset = statefulsets[region.name]
        assert statefulset["spec"]["replicas"] == region.pop_nodes
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        expected = [spec.name for spec in topology.node_specs() if spec.region == region.name]
        assert _pod_names(statefulset) == expected


def test_every_container_has_grpc_probes_on_the_health_service(
    k8s_objects: list[dict[str, Any]],
) -> None:
    for name, container in _containers(k8s_objects):
        module = container["command"][-1]
        grpc_port = _port(container, "grpc")
        for probe in ("startupProbe", "livenessProbe"):
            # "" answers as soon as the gRPC server runs: is the process alive.
            assert container[probe]["grpc"] == {"port": grpc_port, "service": ""}, (name, probe)
        # The role's service turns SERVING last, once the node has started.
        readiness = container["readinessProbe"]["grpc"]
        assert readiness == {"port": grpc_port, "service": ROLE_SERVICES[module]}, name


def test_every_pod_runs_as_non_root_without_privileges(k8s_objects: list[dict[str, Any]]) -> None:
    namespace = _one(k8s_objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, statefulset in _of_kind(k8s_objects, "StatefulSet").items():
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == IMAGE_UID, name
        assert security["fsGroup"] == IMAGE_UID, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert not context.get("privileged", False), name
            assert context.get("runAsUser", security["runAsUser"]) != 0, name


def test_every_container_has_resource_requests_and_limits(
    k8s_objects: list[dict[str, Any]],
) -> None:
    for name, container in _containers(k8s_objects):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


def test_node_data_lives_on_a_retained_persistent_volume_claim(
    k8s_objects: list[dict[str, Any]],
) -> None:
    for name, statefulset in _of_kind(k8s_objects, "StatefulSet").items():
        claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
        assert claims["data"]["spec"]["resources"]["requests"]["storage"], name
        retention = statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
        assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}, name
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert f"--data-dir={mounts['data']}" in container["args"], name


def test_pop_lmdb_maps_fit_their_volume(k8s_objects: list[dict[str, Any]]) -> None:
    """A PoP opens two environments (KV replica, objects) of --map-size-mb each."""
    units = {"Mi": 1, "Gi": 1024}
    for name, statefulset in _of_kind(k8s_objects, "StatefulSet").items():
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        (flag,) = [arg for arg in container["args"] if arg.startswith("--map-size-mb=")]
        environments = 2 if container["command"][-1] == "pop_node" else 1
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        size = claim["spec"]["resources"]["requests"]["storage"]
        match = re.fullmatch(r"(\d+)(Mi|Gi)", size)
        assert match is not None, f"{name}: unexpected volume size {size}"
        size_mib = int(match[1]) * units[match[2]]
        assert environments * int(flag.split("=")[1]) < size_mib, name


def test_secret_and_topology_are_mounted_from_the_generated_objects(
    k8s_objects: list[dict[str, Any]],
) -> None:
    secret = _one(k8s_objects, "Secret")
    token = base64.b64decode(secret["data"]["cluster.token"]).decode().strip()
    assert token == PLACEHOLDER_TOKEN
    config_map = _one(k8s_objects, "ConfigMap")
    for name, statefulset in _of_kind(k8s_objects, "StatefulSet").items():
        pod = statefulset["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        # kustomize rewrote the references to the hashed names: a change rolls the pods.
        assert volumes["token"]["secret"]["secretName"] == secret["metadata"]["name"], name
        assert volumes["topology"]["configMap"]["name"] == config_map["metadata"]["name"], name
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["token"]["readOnly"] is True
        token_dir, topology_dir = mounts["token"]["mountPath"], mounts["topology"]["mountPath"]
        assert f"--token-file={token_dir}/cluster.token" in container["args"], name
        assert f"--topology={topology_dir}/topology.yaml" in container["args"], name


def test_topology_configmap_parses_and_names_every_node_by_dns(
    k8s_objects: list[dict[str, Any]],
) -> None:
    config_map = _one(k8s_objects, "ConfigMap")
    topology = parse_topology(yaml.safe_load(config_map["data"]["topology.yaml"]))
    assert topology == load_topology(K8S / "topology.yaml") == default_topology()

    nodes = _nodes_list(k8s_objects)
    assert [(n["name"], n["role"], n["region"]) for n in nodes] == [
        (spec.name, spec.role, spec.region) for spec in topology.node_specs()
    ]
    statefulsets = _of_kind(k8s_objects, "StatefulSet")
    headless = {
        name
        for name, s in _of_kind(k8s_objects, "Service").items()
        if s["spec"].get("clusterIP") == "None"
    }
    for node in nodes:
        for field in ("grpc_address", "http_address", "metrics_address"):
            if field not in node:
                continue
            host, port = node[field].rsplit(":", 1)
            # <pod>.<headless service>: resolvable in the namespace, whatever its name.
            pod, service = host.split(".")
            assert service in headless, node[field]
            assert pod in _pod_names(statefulsets[service]), node[field]
            (container,) = statefulsets[service]["spec"]["template"]["spec"]["containers"]
            assert int(port) == _port(container, field.removesuffix("_address")), node[field]


def test_podmonitors_scrape_the_metrics_port_of_each_role(
    k8s_objects: list[dict[str, Any]],
) -> None:
    schema = json.loads((K8S / "schemas" / "podmonitor-monitoring-v1.json").read_text())
    statefulsets = _of_kind(k8s_objects, "StatefulSet").values()
    scraped: set[str] = set()
    for name, monitor in _of_kind(k8s_objects, "PodMonitor").items():
        jsonschema.validate(monitor, schema)
        selector = monitor["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        matched = [
            s
            for s in statefulsets
            if selector.items() <= s["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"PodMonitor {name} selects no pods"
        for statefulset in matched:
            (container,) = statefulset["spec"]["template"]["spec"]["containers"]
            assert endpoint["port"] in {port["name"] for port in container["ports"]}
            assert f"--metrics-port={_port(container, endpoint['port'])}" in container["args"]
            scraped.add(statefulset["metadata"]["name"])
    assert scraped == set(_of_kind(k8s_objects, "StatefulSet"))


def _relabel(
    rules: list[dict[str, Any]], pod_name: str, pod_labels: dict[str, str]
) -> dict[str, str]:
    """Prometheus' `replace` relabeling of a pod target's Kubernetes meta labels."""
    labels = {"__meta_kubernetes_pod_name": pod_name} | {
        "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
        for key, value in pod_labels.items()
    }
    for rule in rules:
        assert rule.get("action", "replace") == "replace", rule
        value = rule.get("separator", ";").join(
            labels.get(n, "") for n in rule.get("sourceLabels", [])
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            replacement = re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1"))
            labels[rule["targetLabel"]] = match.expand(replacement)
    return {key: value for key, value in labels.items() if not key.startswith("__")}


def test_podmonitor_targets_carry_the_labels_of_edgectls_discovery(
    k8s_objects: list[dict[str, Any]],
) -> None:
    """node, region and role as `edgectl observe` sets them: deploy/prometheus's rules use them."""
    nodes = {node["name"]: node for node in _nodes_list(k8s_objects)}
    labelled = set()
    for monitor in _of_kind(k8s_objects, "PodMonitor").values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        # The series' own labels (node, region, an object class's namespace) win.
        assert endpoint["honorLabels"] is True
        for statefulset in _of_kind(k8s_objects, "StatefulSet").values():
            pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
            if not selector.items() <= pod_labels.items():
                continue
            for pod in _pod_names(statefulset):
                target = _relabel(endpoint["relabelings"], pod, pod_labels)
                node = nodes[target["node"]]
                assert target == {
                    "node": node["name"],
                    "region": node["region"],
                    "role": node["role"],
                }
                labelled.add(target["node"])
    assert labelled == set(nodes)


# -- the command lines, through the real entry points -------------------------------------


def _parse_node_command(
    command: list[str], monkeypatch: pytest.MonkeyPatch, topology_file: Path
) -> NodeConfig:
    """Run `python -m ROLE ARGS` up to the node's construction; return its config."""
    assert command[:2] == ["python", "-m"], command
    module_name, args = command[2], command[3:]
    # The mounted topology file is the ConfigMap's; here it is a copy in a temp dir.
    args = [f"--topology={topology_file}" if arg.startswith("--topology=") else arg for arg in args]
    main_module = importlib.import_module(f"{module_name}.__main__")
    captured: list[NodeConfig] = []
    monkeypatch.setattr(main_module, ROLE_NODE_CLASSES[module_name], lambda config: config)
    monkeypatch.setattr(main_module, "run", captured.append)
    monkeypatch.setattr(sys, "argv", [module_name, *args])
    main_module.main()
    (config,) = captured
    return config


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def test_k8s_command_lines_are_accepted_by_the_role_entry_points(
    k8s_objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(_one(k8s_objects, "ConfigMap")["data"]["topology.yaml"])
    nodes = {node["name"]: node for node in _nodes_list(k8s_objects)}
    control_plane = next(n for n in nodes.values() if n["role"] == "control_plane")
    origin = next(n for n in nodes.values() if n["role"] == "origin")
    started = set()
    for statefulset in _of_kind(k8s_objects, "StatefulSet").values():
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        for pod in _pod_names(statefulset):
            args = _expand(container["args"], {"POD_NAME": pod})
            command = [*container["command"], *args]
            config = _parse_node_command(command, monkeypatch, topology_file)
            node = nodes[config.name]
            assert node["role"] == ROLE_OF_MODULE[container["command"][-1]]
            assert config.region == node["region"]
            assert config.host == "0.0.0.0"
            assert f"{config.advertise_host}:{config.grpc_port}" == node["grpc_address"]
            assert f"{config.advertise_host}:{config.metrics_port}" == node["metrics_address"]
            if "http_address" in node:
                assert f"{config.advertise_host}:{config.http_port}" == node["http_address"]
            if node["role"] != "control_plane":
                assert config.control_plane_address == control_plane["grpc_address"]
            if node["role"] == "pop":
                assert isinstance(config, PopConfig)
                assert config.origin_address == origin["grpc_address"]
            assert config.topology == default_topology()
            started.add(config.name)
    assert started == set(nodes)


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_compose_runs_every_node_of_the_topology_with_a_shared_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    topology = load_topology(K8S / "topology.yaml")
    node_services = {
        name: s for name, s in services.items() if "tools" not in s.get("profiles", [])
    }
    assert set(node_services) == {spec.name for spec in topology.node_specs()}
    published: list[str] = []
    data_volumes: list[str] = []
    for name, service in node_services.items():
        config = _parse_node_command(service["command"], monkeypatch, K8S / "topology.yaml")
        assert config.name == name
        # Others reach it by its service name on the compose network.
        assert config.advertise_host == name
        if config.control_plane_address:
            assert config.control_plane_address.split(":")[0] in services
        volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert volumes[str(config.token_file.parent)] == "token"
        assert volumes[str(config.data_dir)].startswith("data-")
        data_volumes.append(volumes[str(config.data_dir)])
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        published += [port.rsplit(":", 1)[0] for port in service.get("ports", [])]
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))
    assert len(set(data_volumes)) == len(data_volumes), "two nodes share a data volume"
    assert len(set(published)) == len(published), "two services publish the same host port"


# -- generated files, token, image ----------------------------------------------------------


def test_generated_files_are_current() -> None:
    for path, text in generate.outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run deploy/k8s/generate.py"


@pytest.mark.parametrize("name", ["Tokyo", "1st", "origin", "control-plane", "edge", "a" * 61])
def test_generator_rejects_region_names_kubernetes_cannot_use(name: str) -> None:
    with pytest.raises(generate.GenerateError):
        generate.check_region_name(name)


def test_cluster_token_comes_from_an_ignored_file_and_is_never_committed() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["files"] == ["cluster.token"]
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/cluster.token"], cwd=REPO, timeout=30
    )
    assert ignored.returncode == 0, "deploy/k8s/cluster.token is not git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/k8s/cluster.token"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert tracked.stdout == ""


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_one_non_root_image_from_a_pinned_base() -> None:
    instructions = _dockerfile_instructions()
    bases = {args.split()[0] for op, args in instructions if op == "FROM"}
    # One base for both stages (the venv is copied across), pinned to a patch release.
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"


def test_dockerfile_generates_the_grpc_code_with_the_pinned_tools() -> None:
    instructions = _dockerfile_instructions()
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "grpc_tools.protoc" in runs and "proto/edge/v1/*.proto" in runs
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(pin.split("==") for pin in project["project"]["optional-dependencies"]["dev"])
    assert f"grpcio-tools=={pins['grpcio-tools']}" in runs
    # Every package the project installs is copied into the build.
    # Every package the project installs is copied into the build: a package at the top
    # level by its own folder, one under another `where` root (sdk/) by that root.
    copied = {args.split()[0].rstrip("/") for op, args in instructions if op == "COPY"}
    find = project["tool"]["setuptools"]["packages"]["find"]
    needed = set()
    for pattern in find["include"]:
        top = pattern.split(".")[0].rstrip("*")
        roots = [r for r in find["where"] if (REPO / r / top / "__init__.py").is_file()]
        assert roots, f"{top}: in none of {find['where']}"
        needed.add(top if roots[0] == "." else roots[0])
    assert needed <= copied
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert all(f"!{folder}/" in dockerignore for folder in needed)
