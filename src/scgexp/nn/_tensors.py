"""Tensors from numpy arrays, and a module's parameters and buffers from data statistics."""

from __future__ import annotations

import operator

import numpy as np
import torch


def copy_into(module: torch.nn.Module, values: dict[str, np.ndarray | float]) -> None:
    """Copy arrays into ``module``'s parameters or buffers, named as attributes (``"a.bias"``).

    Values are cast to float32 and broadcast to each tensor's shape, on the tensor's device.

    Examples
    --------
    >>> copy_into(model.module, {"input_mean": mean, "mean_head.bias": log_means})
    """
    with torch.no_grad():
        for name, value in values.items():
            tensor = operator.attrgetter(name)(module)
            tensor.copy_(as_tensor(value, dtype=torch.float32))


def as_tensor(array, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """:func:`torch.as_tensor` of ``array``, copying it first only if it is read-only.

    pandas 3 hands out read-only views of obs columns, and torch warns on those (a tensor that
    shares their memory could write to them). Writable arrays are shared as by torch.

    Examples
    --------
    >>> as_tensor(adata.obs["qc"].to_numpy(), dtype=torch.float32)
    """
    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array, dtype=dtype, device=device)
