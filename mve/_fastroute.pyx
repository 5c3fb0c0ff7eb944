"""Placeholder: the Cython hot path is being written (see mve/_fastroute.pyi for its API)."""
