"""Warnings that point at the user's line, however deep in scgexp or its libraries they arise."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import click
import lightning
import scvi
import torch

_LIBRARIES = (sys.modules["scgexp"], scvi, torch, lightning, click)
_INTERNAL = (*(os.path.dirname(module.__file__) for module in _LIBRARIES), contextlib.__file__)


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
