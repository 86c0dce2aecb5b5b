"""edgepop."""
