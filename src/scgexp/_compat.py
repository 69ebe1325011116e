"""Every private scvi-tools import lives here, so a release bump touches one file."""

from __future__ import annotations

from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY, _SETUP_METHOD_NAME
from scvi.data._utils import registry_key_to_default_dtype
from scvi.model._utils import parse_device_args
from scvi.model.base._save_load import _initialize_model

__all__ = [
    "_MODEL_NAME_KEY",
    "_SETUP_ARGS_KEY",
    "_SETUP_METHOD_NAME",
    "_initialize_model",
    "parse_device_args",
    "registry_key_to_default_dtype",
]
