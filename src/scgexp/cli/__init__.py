"""The ``scgexp`` command line."""

from scgexp.cli._main import main

__all__ = ["main"]
