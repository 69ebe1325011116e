"""Warnings that point at the user's line, however deep in scgexp or its libraries they arise."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from importlib.util import find_spec

# Folders of scgexp and the libraries it calls, found without importing them (the command
# line's --help and argument errors come before any of them is needed).
_LIBRARIES = ("scgexp", "scvi", "torch", "lightning", "click")
_FOLDERS = (os.path.dirname(find_spec(name).origin) for name in _LIBRARIES)
_INTERNAL = (*_FOLDERS, contextlib.__file__)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` at the first caller outside scgexp and its libraries (and click).

    Examples
    --------
    >>> warn_user("3 of 978 landmark genes are missing; they are filled with their training mean.")
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
