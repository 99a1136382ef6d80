"""Hypernetwork kernels in Triton (placeholder, filled below)."""
raise ImportError("not yet")
