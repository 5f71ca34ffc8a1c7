"""Architectures shipped with edgekiln, for state-dict sources (``--arch zoo/<file>.py:<fn>``).

Plain torch only (torchvision from PyPI does not import beside the CPU torch wheel)."""
