"""chunkq's benchmark suite: ``python -m bench`` (see bench/__main__.py for what it measures)."""
