"""The mcir version: a leaf module, so the backend can stamp libraries without importing the package."""

__version__ = "0.1.0"
