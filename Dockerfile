# edgepop: one image for every role (control plane, origin, PoP) and for edgectl.
#
#   docker build -t edgepop:local .
#   docker run --rm edgepop:local python -m pop_node --help
#
# The role is the command (`python -m control_plane|origin_node|pop_node ...`), so
# Kubernetes, compose and a plain `docker run` all say which node a container is, with
# the same flags as `edgectl cluster up` passes. deploy/README.md explains the layout.

# --- build: install the package and generate the gRPC code --------------------------
# The base is pinned to a patch release (not a moving `3.11-slim`) so a rebuild gets the
# same interpreter; pin the digest too (@sha256:...) where the registry can be asked.
FROM python:3.11.14-slim-bookworm AS build

WORKDIR /src
# The code generator is a build tool only: it is installed here, outside the runtime
# venv, at the version pyproject.toml pins for `make proto` (tests/unit/test_deploy.py
# keeps the two equal).
RUN pip install --no-cache-dir grpcio-tools==1.85.1 \
    && python -m venv /opt/edgepop

COPY pyproject.toml ./
COPY proto/ proto/
COPY edgepop/ edgepop/
COPY control_plane/ control_plane/
COPY origin_node/ origin_node/
COPY pop_node/ pop_node/
COPY edgectl/ edgectl/
COPY sdk/ sdk/

# A regular (non-editable) install of the pinned runtime dependencies and the roles,
# then `make proto`'s codegen. The generated package `edge.v1` goes into site-packages
# itself (the dev venv uses a .pth pointing at gen/ instead), compiled ahead of time
# because the root filesystem is read-only at run time.
RUN /opt/edgepop/bin/pip install --no-cache-dir . \
    && mkdir gen \
    && python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen proto/edge/v1/*.proto \
    && touch gen/edge/__init__.py gen/edge/v1/__init__.py \
    && site="$(/opt/edgepop/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cp -r gen/edge "$site/" \
    && /opt/edgepop/bin/python -m compileall -q "$site/edge" \
    && /opt/edgepop/bin/python -c 'import edge.v1.pop_pb2_grpc, pop_node.node, origin_node.node, control_plane.node'

# --- runtime ---------------------------------------------------------------------------
# Same base as the build stage: the venv is copied as is and must find the same Python.
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="edgepop" \
      org.opencontainers.image.description="edgepop nodes (control plane, origin, PoP) and edgectl"

# PYTHONUNBUFFERED: logs reach `kubectl logs` / `docker logs` at once.
# GRPC_DNS_RESOLVER=native: nodes reach each other by short DNS names (tokyo-1.tokyo in
# Kubernetes, tokyo-1 in compose) that rely on the resolv.conf search path; the system
# resolver honours it whatever gRPC's built-in resolver does.
ENV PATH="/opt/edgepop/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_DNS_RESOLVER=native \
    EDGEPOP_GRPC_PORT=7000

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it and fsGroup can
# match it. /data (LMDB) and the token dir belong to it: an empty named volume mounted
# there (compose) takes the image's ownership, so the node can write without root.
RUN groupadd --system --gid 10001 edgepop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin edgepop \
    && mkdir -p /data /etc/edgepop/token /etc/edgepop/topology \
    && chown 10001:10001 /data /etc/edgepop/token

COPY --from=build /opt/edgepop /opt/edgepop
COPY deploy/docker/healthcheck.py /opt/edgepop/healthcheck.py

USER 10001:10001
WORKDIR /data

# gRPC (every role), HTTP (PoP ingress, origin app), Prometheus metrics (every role).
EXPOSE 7000 8080 9100

# Process-level check by default; compose sets EDGEPOP_HEALTH_SERVICE to the role's
# service so "healthy" means the node finished starting. Kubernetes ignores this and
# uses its own grpc probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/edgepop/healthcheck.py"]

CMD ["edgectl", "--help"]
