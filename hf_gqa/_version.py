"""The package version, in its own module so that no module inside the package imports `hf_gqa/__init__`."""

__version__ = "0.1.0"
