"""origin_node."""
