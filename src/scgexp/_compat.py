"""Every private scvi-tools import lives here, so a release bump touches one file."""

from __future__ import annotations

from scvi.data._constants import (
    _MANAGER_UUID_KEY,
    _MODEL_NAME_KEY,
    _SCVI_UUID_KEY,
    _SETUP_ARGS_KEY,
    _SETUP_METHOD_NAME,
)
from scvi.data._utils import _assign_adata_uuid, registry_key_to_default_dtype
from scvi.dataloaders._data_splitting import validate_data_split
from scvi.model._utils import (
    parse_device_args,
    scatac_raw_counts_properties,
    scrna_raw_counts_properties,
)
from scvi.model.base._de_core import _de_core
from scvi.model.base._log_likelihood import compute_reconstruction_error
from scvi.model.base._save_load import _initialize_model
from scvi.module._constants import MODULE_KEYS
from scvi.train._logger import SimpleLogger

__all__ = [
    "MODULE_KEYS",
    "_MANAGER_UUID_KEY",
    "_MODEL_NAME_KEY",
    "_SCVI_UUID_KEY",
    "_SETUP_ARGS_KEY",
    "_SETUP_METHOD_NAME",
    "SimpleLogger",
    "_assign_adata_uuid",
    "_de_core",
    "_initialize_model",
    "compute_reconstruction_error",
    "parse_device_args",
    "registry_key_to_default_dtype",
    "scatac_raw_counts_properties",
    "scrna_raw_counts_properties",
    "validate_data_split",
]
