"""Setting a module's parameters and buffers from data statistics."""

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
            tensor.copy_(torch.tensor(np.asarray(value), dtype=torch.float32))
