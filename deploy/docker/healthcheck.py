"""Container health check: ask a node's standard gRPC health service (no grpcurl needed).

Docker's HEALTHCHECK and the compose file run it. Kubernetes uses its native `grpc:`
probes instead; on clusters older than 1.24 this script is the exec-probe fallback. Exit
status 0 means SERVING and 1 anything else (no answer, NOT_SERVING, unknown service), as
Docker expects.

The empty service name asks whether the process answers at all (liveness). A role's
service name (`edge.v1.Pop`, `edge.v1.Origin`, `edge.v1.ControlPlane`) asks whether the
node finished starting: a node marks its own service SERVING last, after storage, servers
and (for a PoP) its workers are up, while the empty name is SERVING from the moment the
gRPC server starts.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

GRPC_PORT_DEFAULT = "7000"
TIMEOUT_S_DEFAULT = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__)
    parser.add_argument(
        "--address",
        default=f"127.0.0.1:{os.environ.get('EDGEPOP_GRPC_PORT', GRPC_PORT_DEFAULT)}",
        help="host:port of the node's gRPC server (default: 127.0.0.1:$EDGEPOP_GRPC_PORT)",
    )
    parser.add_argument(
        "--service",
        default=os.environ.get("EDGEPOP_HEALTH_SERVICE", ""),
        help="service to ask about ('' = the process; default: $EDGEPOP_HEALTH_SERVICE)",
    )
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S_DEFAULT)
    args = parser.parse_args()

    what = f"{args.address} {args.service or '(server)'}"
    with grpc.insecure_channel(args.address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as error:
            print(f"{what}: {error.code().name}", file=sys.stderr)
            return 1
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"{what}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
