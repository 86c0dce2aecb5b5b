"""edgectl."""
