"""control_plane."""

from edgepop.grpc_env import use_node_defaults

# Before anything in this package imports grpc (edgepop.grpc_env says why).
use_node_defaults()
