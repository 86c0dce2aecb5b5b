# edgepop — every target installs what it needs first (venv, packages, generated code).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/edge/v1/*.proto)
GEN_STAMP := gen/.stamp
DATA_DIR ?= .cluster
# The slowest tests are listed after every run: make test stays under 15 minutes on 2 cores.
PYTEST_ARGS ?= --durations=20
PROMTOOL ?= promtool

.PHONY: install browser proto test test-chaos test-tls lint cluster bench chaos fuzz clean distclean observe check-observability

install: $(VENV)/.installed $(GEN_STAMP)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# generated code lives in gen/ (the proto import path), the Cloudflare SDK names in sdk/:
	# both go on the venv's path as plain entries (an editable install's import hook comes
	# after the path, where the seed workers' folder `workers/` would pass for `workers`)
	$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'edgepop-gen.pth').write_text(''.join(str(pathlib.Path(d).resolve()) + '\n' for d in ('gen', 'sdk')))"
	touch $@

$(GEN_STAMP): $(PROTOS) $(VENV)/.installed
	# generate beside, then swap: a running process never sees a half-written package
	rm -rf gen.new && mkdir -p gen.new
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=gen.new --grpc_python_out=gen.new --mypy_out=gen.new --mypy_grpc_out=gen.new $(PROTOS)
	touch gen.new/edge/__init__.py gen.new/edge/v1/__init__.py gen.new/edge/py.typed gen.new/.stamp
	rm -rf gen && mv gen.new gen

proto:
	rm -f $(GEN_STAMP)
	$(MAKE) $(GEN_STAMP)

# The whole suite except the seeded fault runs (marker `chaos`), which `test-chaos` runs:
# together they would outgrow the 15 minutes a change may take; CI runs both.
# Two phases. Most tests wait (leases, caches, emulated WAN) more than they compute, so
# they run on TEST_WORKERS pytest-xdist workers side by side, each file whole on one
# worker (its module cluster starts once; each worker picks ports from its own range).
# Tests marked `timing` assert wall-clock bounds that a neighbour's CPU could break:
# they run alone afterwards. Both phases always run; make test fails if either failed.
# A phase that selects nothing (PYTEST_ARGS naming one file) is no failure (pytest's 5),
# unless neither selects anything.
TEST_WORKERS ?= 2
test: install browser
	rc=0; empty=0; \
	phase() { "$$@"; status=$$?; \
	  if [ $$status = 5 ]; then empty=$$((empty + 1)); elif [ $$status != 0 ]; then rc=$$status; fi; }; \
	phase $(PY) -m pytest -m "not chaos and not timing" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
	phase $(PY) -m pytest -m "timing and not chaos" $(PYTEST_ARGS); \
	if [ $$empty = 2 ]; then rc=5; fi; \
	exit $$rc

# The web console's tests drive Debian's Chromium headless through Playwright (issue 14):
# installed from Debian's packages when missing (as root, or with sudo).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  echo "installing Debian's chromium for the console's browser tests"; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

# Three short seeded fault runs with the full fault mix, and the planted bug they must
# catch (issue 10): about 2.5 minutes.
test-chaos: install
	$(PY) -m pytest -m chaos tests/integration/test_chaos.py $(PYTEST_ARGS)

# The foundation tests (issue 2) again with every fixture cluster on mutual TLS
# (EDGEPOP_TEST_TLS=1, see tests/conftest.py); the last test checks TLS was really on.
FOUNDATION_TESTS := tests/integration/test_kv_replication.py \
	tests/integration/test_kv_crash_recovery.py tests/integration/test_kv_limits.py \
	tests/integration/test_control_plane.py tests/integration/test_metrics.py
test-tls: install
	EDGEPOP_TEST_TLS=1 $(PY) -m pytest $(FOUNDATION_TESTS) \
	  tests/integration/test_tls.py::test_fixture_clusters_follow_the_session_tls_setting \
	  $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

cluster: install
	$(VENV)/bin/edgectl cluster up --data-dir $(DATA_DIR) --workers workers $(CLUSTER_ARGS)

# Prometheus (Debian's, installed if missing) against the running cluster in DATA_DIR,
# with deploy/prometheus's rules and targets that follow the nodes; Ctrl-C stops it.
observe: install
	$(VENV)/bin/edgectl observe --data-dir $(DATA_DIR) $(OBSERVE_ARGS)

# promtool on the config, the rules, the rules' unit tests and every dashboard query;
# the committed dashboard must be what deploy/grafana/dashboard.py generates.
check-observability: install
	$(VENV)/bin/edgectl observe --install-only >/dev/null
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) check rules deploy/prometheus/rules/*.yml
	$(PROMTOOL) test rules deploy/prometheus/tests/*.yml
	$(PY) deploy/grafana/dashboard.py --check
	queries=$$(mktemp -d) && trap 'rm -rf "$$queries"' EXIT && \
	  $(PY) deploy/grafana/dashboard.py --rules "$$queries/dashboard-queries.yml" && \
	  $(PROMTOOL) check rules "$$queries/dashboard-queries.yml"

# BENCH_ARGS: e.g. "--quick" or "--only propagation,scale" (python -m bench --help).
BENCH_ARGS ?=
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# Seeded fault runs (issue 10), each on a fresh cluster of its own: SEEDS=20 runs seeds
# 1..20 (or a list: SEEDS=3,7,10-12), each with DURATION seconds of load and faults;
# prints one line per seed (and the window of history that shows any violation) and
# exits non-zero when any seed found one. CHAOS_ARGS adds options, e.g.
# CHAOS_ARGS="--faults kill-chain,isolate-region --report build/chaos".
SEEDS ?= 3
DURATION ?= 60
CHAOS_ARGS ?=
chaos: install
	$(VENV)/bin/edgectl chaos run --seeds $(SEEDS) --duration $(DURATION) $(CHAOS_ARGS)

# The RPC and HTTP fuzz on another sequence of requests than `make test` replays: a new
# one per run unless SEED=N is given; the seed is printed first, so a failure replays
# with `make fuzz SEED=N` (EDGEPOP_FUZZ_SEED, tests/integration/fuzz.py).
FUZZ_SEED := $(or $(SEED),$(shell od -An -N4 -tu4 /dev/urandom | tr -d ' '))
fuzz: install
	@echo "fuzz seed $(FUZZ_SEED): make fuzz SEED=$(FUZZ_SEED) replays this run"
	EDGEPOP_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest tests/integration/test_fuzz_rpc.py \
		tests/integration/test_fuzz_http.py $(PYTEST_ARGS)

.PHONY: check-deploy k8s-token

# Deployment files, checked statically (no container engine or cluster needed): the
# generated ones are current; the kustomize build validates strictly (core kinds with
# kubernetes-validate against Kubernetes 1.27, the oldest the manifests support, and
# the newest; the PodMonitor CRD against a vendored schema, which also fails on any
# kind nothing covers); hadolint passes the Dockerfile; compose accepts compose.yaml.
# kubectl ships with the machine image (1.32, kustomize v5); where it is missing,
# Debian's kubernetes-client (1.20, kustomize v2.0.3) builds the same objects.
# The build goes to a file, not a pipe: a failing kustomize must fail the target
# rather than hand the validator an empty stream.
K8S_BUILD := build/k8s.yaml
K8S_VERSIONS := -k 1.27.0 -k 1.37.0
check-deploy: install deploy/k8s/cluster.token
	$(PY) deploy/k8s/generate.py --check
	command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client)
	mkdir -p $(dir $(K8S_BUILD))
	kubectl kustomize deploy/k8s > $(K8S_BUILD)
	$(VENV)/bin/kubernetes-validate --strict --quiet --no-warn $(K8S_VERSIONS) $(K8S_BUILD)
	$(PY) deploy/k8s/validate_crds.py $(K8S_VERSIONS) $(K8S_BUILD)
	$(VENV)/bin/hadolint Dockerfile
	# compose v2 if the docker CLI has it; else Debian's docker-compose 1.29, which
	# predates the top-level `name:` (dropped for its check only)
	if docker compose version >/dev/null 2>&1; then \
	  docker compose -f deploy/compose.yaml --profile tools config -q; \
	else \
	  command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose); \
	  grep -v '^name: ' deploy/compose.yaml | docker-compose --project-directory deploy -f - --profile tools config -q; \
	fi

# The cluster token the Kubernetes Secret is generated from: random, 0600, git-ignored.
# Kept once made: a new token rolls every pod.
k8s-token: deploy/k8s/cluster.token
deploy/k8s/cluster.token:
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@.tmp && mv $@.tmp $@

clean:
	rm -rf gen .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(DATA_DIR)
