"""Pieces every stage reads: the skeleton, strict yaml configs, and user-facing errors."""
