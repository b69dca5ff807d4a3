"""sidlib."""
