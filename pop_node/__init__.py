"""pop_node."""
