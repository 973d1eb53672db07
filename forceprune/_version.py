"""The package version, in a module of its own so that any room can read it without importing
the package face (``forceprune/__init__.py``)."""

__version__ = "0.1.0"
