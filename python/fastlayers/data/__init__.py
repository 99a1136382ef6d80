"""Dataset loaders and generators (read from a path; nothing downloads)."""
