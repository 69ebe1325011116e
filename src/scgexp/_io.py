"""Safe (``weights_only``) saving and loading of scgexp models.

scvi-tools pickles the model's attributes into ``model.pt`` and loads it with
``torch.load(weights_only=False)``, which can run arbitrary code from a file. scgexp writes the
tensors alone to ``model.pt`` (loaded with ``weights_only=True``) and every other attribute to
``attributes.json``, with the SHA-256 of ``model.pt``: torch does not notice bytes damaged on a
disk or in a copy, ``load`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from functools import partial
from typing import Any
from uuid import uuid4

import anndata
import mudata
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only

from scgexp._compat import (
    _MANAGER_UUID_KEY,
    _MODEL_NAME_KEY,
    _SCVI_UUID_KEY,
    _SETUP_ARGS_KEY,
    _SETUP_METHOD_NAME,
    _assign_adata_uuid,
    _initialize_model,
    parse_device_args,
)
from scgexp.data._checks import (
    InputError,
    changed_obs_keys,
    check_feature_names,
    obs_location,
    registered_features,
    renamed_categories,
    still_counts,
)
from scgexp.data._matrix import all_finite

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
ATTRIBUTES_FILE = "attributes.json"
ADATA_FILE = "adata.h5ad"
MDATA_FILE = "mdata.h5mu"


def _encode(value: Any) -> Any:
    """Turn an attribute into JSON-compatible values, tagging non-JSON types."""
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return {
            "__ndarray__": _encode(value.tolist()),
            "dtype": value.dtype.str,
            "shape": list(value.shape),
        }
    if isinstance(value, np.generic):
        return _encode(value.item())  # (a NaN is tagged as a float's is)
    if isinstance(value, pd.DataFrame):
        split = value.to_dict(orient="split")
        split["index_name"], split["columns_name"] = value.index.name, value.columns.name
        return {"__dataframe__": _encode(split)}
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, pd.Interval):  # categories made by pd.cut
        return {"__interval__": [_encode(value.left), _encode(value.right), value.closed]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"Cannot save an attribute of type {type(value).__name__}: {value!r}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dict__" in value:
        return {_decode(k): _decode(v) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        data = _decode(value["__ndarray__"])
        array = np.array(data, dtype=object if dtype.kind == "O" else dtype)
        return array.reshape(value.get("shape", array.shape))
    if "__dataframe__" in value:
        split = _decode(value["__dataframe__"])
        frame = pd.DataFrame(split["data"], index=split["index"], columns=split["columns"])
        frame.index.name = split.get("index_name")
        frame.columns.name = split.get("columns_name")
        return frame
    if "__float__" in value:
        return float(value["__float__"])
    if "__interval__" in value:
        left, right, closed = _decode(value["__interval__"])
        return pd.Interval(left, right, closed=closed)
    raise ValueError(f"Unknown tagged value in {ATTRIBUTES_FILE}: {sorted(value)}")


def _file_names(prefix: str | None) -> dict[str, str]:
    """Each saved file's name, with ``prefix`` in front."""
    return {
        name: f"{prefix or ''}{name}"
        for name in (MODEL_FILE, ATTRIBUTES_FILE, ADATA_FILE, MDATA_FILE)
    }


def _read_attributes(dir_path: str, files: dict[str, str]) -> dict:
    """A saved model's ``attributes.json``, with clear errors for a missing or damaged file."""
    path = os.path.join(dir_path, files[ATTRIBUTES_FILE])
    if not os.path.exists(path):
        others = [
            repr(name[: -len(ATTRIBUTES_FILE)] or None)
            for name in (sorted(os.listdir(dir_path)) if os.path.isdir(dir_path) else [])
            if name.endswith(ATTRIBUTES_FILE) and name != files[ATTRIBUTES_FILE]
        ]
        hint = f"; the folder has models saved with prefix={' or '.join(others)}" if others else ""
        if "://" in str(dir_path):
            hint += "; models are read from a local folder: download it first"
        raise FileNotFoundError(
            f"No saved scgexp model in {str(dir_path)!r} ({files[ATTRIBUTES_FILE]} is "
            f"missing{hint})."
        )
    try:
        with open(path) as handle:
            saved = _decode(json.load(handle))
        if "attr_dict" not in saved:
            raise KeyError("attr_dict")
        return saved
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{_damaged(dir_path)} {files[ATTRIBUTES_FILE]}: {error}") from None


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _damaged(dir_path: str) -> str:
    return (
        f"{str(dir_path)!r} holds a damaged scgexp model (an interrupted save or copy?); save the "
        "model again."
    )


def _read_saved_model(dir_path: str, prefix: str | None) -> tuple[dict, dict]:
    """A saved model's attributes and weights (loaded ``weights_only``), checked for damage."""
    files = _file_names(prefix)
    saved = _read_attributes(dir_path, files)
    damaged = _damaged(dir_path)
    model_path = os.path.join(dir_path, files[MODEL_FILE])
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{damaged} {files[MODEL_FILE]} is missing.")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(model_path):  # not a torch file at all (e.g. an LFS pointer)
            raise InputError(f"{damaged} {files[MODEL_FILE]} is not a saved torch file.") from None
        # torch's message suggests weights_only=False, which would run code from the file.
        raise InputError(
            f"{model_path} holds more than tensors and is not loaded (it could run code). "
            "scgexp's save() writes tensors only; re-save the model with scgexp."
        ) from None
    except (EOFError, OSError, RuntimeError) as error:
        raise InputError(f"{damaged} {files[MODEL_FILE]}: {str(error) or 'empty file'}") from None
    if not isinstance(state, dict):
        raise InputError(f"{damaged} {files[MODEL_FILE]} holds no weights by name.")
    expected = saved.get("model_sha256")  # (absent from saves before it was recorded)
    if expected is not None and expected != _sha256(model_path):
        raise InputError(f"{damaged} {files[MODEL_FILE]} differs from the one saved.")
    return saved["attr_dict"], state


def _load_weights(module: torch.nn.Module, state: dict, source: str) -> None:
    """``module.load_state_dict``, refusing weights of another scgexp version clearly."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:  # saved by an scgexp whose module had other parameters
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise InputError(
            f"{source} saved by another version of scgexp, whose parameters differ from this "
            f"version's ({detail}). Train and save it again with this version."
        ) from None


@contextmanager
def _transferring_own_setup(manager, data):
    """Have scvi-tools register ``data`` again with ``manager``'s own setup, or leave both be.

    Data set up again since (e.g. for another model) would be registered from scratch, batches
    (and DGEX landmarks) encoded as the data now say; with a source registry,
    ``AnnDataManager.validate`` transfers the model's setup instead.
    """
    if manager._source_registry is None:
        manager._source_registry = deepcopy(manager.registry)
    registry = deepcopy(manager.registry)
    data.uns[_MANAGER_UUID_KEY] = str(uuid4())  # a modality's setup leaves the MuData's id
    try:
        yield
    except BaseException:  # scvi-tools has dropped the data and half the registry
        manager.adata = data
        manager.registry.clear()  # in place: the model's registry_ is this dict
        manager.registry.update(registry)
        data.uns[_MANAGER_UUID_KEY] = str(uuid4())  # obs['_scvi_*'] may differ: all register
        raise
    finally:
        _invalidate_modality_setups(data)


def _written_codes(manager) -> str:
    """A digest of the obs/obsm columns scvi-tools wrote for ``manager`` (``_scvi_*``).

    A setup of the same data, or of a MuData's modality, for another model rewrites them.
    """
    digest = hashlib.blake2b(digest_size=16)
    for key, entry in manager.data_registry.items():
        if str(entry.attr_key).startswith("_scvi_"):
            values = manager.get_from_registry(key)  # codes, or covariates of mixed dtypes
            if hasattr(values, "to_numpy"):
                values = values.to_numpy(dtype=np.float64, na_value=np.nan)
            digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _invalidate_modality_setups(data) -> None:
    """Make models set up on a MuData's modalities register it again on their next use.

    Registering the MuData rewrites their ``obs['_scvi_*']`` columns but not the modality's
    ``uns`` manager id, by which scvi-tools' models would notice.
    """
    for modality in getattr(data, "mod", {}).values():
        if _MANAGER_UUID_KEY in modality.uns:
            modality.uns[_MANAGER_UUID_KEY] = str(uuid4())


class SafeSaveMixin:
    """``save``/``load`` that never unpickle: tensors load with ``weights_only=True``."""

    #: Appended to load()'s error when ``adata`` lacks training features.
    _load_hint = ""

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model's weights, settings and, optionally, its data.

        Parameters
        ----------
        dir_path
            Folder to write into (created if needed).
        prefix
            Put this before every file name, so that several models can share a folder
            (``load`` takes the same ``prefix``).
        overwrite
            Replace an existing folder's model files (and, with ``save_anndata``, its data
            file). A data file that an earlier model left there is refused (``load`` would pair
            it with this model) unless ``save_anndata`` replaces it.
        save_anndata
            Also write the registered AnnData/MuData, so that ``load(dir_path)`` needs no data.
            Refused if that data changed since setup (features reordered or dropped).
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad` / :meth:`mudata.MuData.write`.

        Examples
        --------
        >>> model.save("my_model", save_anndata=True)
        >>> model = type(model).load("my_model")

        Under distributed training, only the process of rank 0 writes; the others return.
        """
        if rank_zero_only.rank != 0:
            logger.debug("Rank %d skips saving; rank 0 writes the model.", rank_zero_only.rank)
            return
        unsupported = [
            key
            for key in ("save_kwargs", "legacy_mudata_format", "datamodule")
            if anndata_write_kwargs.pop(key, None)  # scvi-tools' defaults (None, False) pass
        ]
        if unsupported:
            raise InputError(
                f"scgexp's save does not take {', '.join(sorted(unsupported))}: it writes the "
                "weights as tensors only (weights_only-safe) and AnnData/MuData in their format."
            )
        if anndata_write_kwargs and not save_anndata:
            raise InputError(
                f"{', '.join(anndata_write_kwargs)} would go to the data writer, which only "
                "runs with save_anndata=True."
            )
        if os.path.exists(dir_path) and not os.path.isdir(dir_path):
            raise InputError(f"{dir_path} is a file; save into a folder (a new or existing one).")
        files = _file_names(prefix)
        if os.path.exists(os.path.join(dir_path, files[MODEL_FILE])) and not overwrite:
            raise ValueError(
                f"{dir_path} already holds a saved model. Pass overwrite=True or another folder."
            )
        data_file = None
        if save_anndata:
            if self.adata is None:
                raise ValueError("This model has no AnnData to save; use save_anndata=False.")
            self._validate_anndata()  # registered data changed since setup cannot be saved
            data_file = MDATA_FILE if isinstance(self.adata, mudata.MuData) else ADATA_FILE
            data_file = files[data_file]
            if os.path.exists(os.path.join(dir_path, data_file)) and not overwrite:
                raise ValueError(  # e.g. the user's own data, kept beside the model
                    f"{dir_path} already holds {data_file}. Pass overwrite=True to replace it, "
                    "or another folder."
                )
        # load() reads any data file in the folder: one left by an earlier model would be paired
        # with this one. Refuse before writing anything rather than delete the user's file.
        stale = [
            name
            for name in (files[ADATA_FILE], files[MDATA_FILE])
            if name != data_file and os.path.exists(os.path.join(dir_path, name))
        ]
        if stale:
            raise ValueError(
                f"{dir_path} holds {', '.join(stale)} from an earlier save, which load() would "
                "pair with these weights. Pass save_anndata=True to write the current data, save "
                "to another folder, or move that file away."
            )
        os.makedirs(dir_path, exist_ok=True)
        attributes = {"attr_dict": self._saved_attributes()}
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

        def write_attributes(path):  # after the weights, whose checksum load() verifies
            attributes["model_sha256"] = _sha256(partials[files[MODEL_FILE]])
            with open(path, "w") as handle:
                json.dump(_encode(attributes), handle)

        # Every file is written in full beside its place first, then all are moved in: a save
        # that fails (full disk) leaves an earlier model in the folder whole, not mixed.
        writers = {
            files[MODEL_FILE]: partial(torch.save, state),
            files[ATTRIBUTES_FILE]: write_attributes,
        }
        if data_file is not None:
            writers[data_file] = partial(self.adata.write, **anndata_write_kwargs)
        partials = {name: os.path.join(dir_path, f".partial.{name}") for name in writers}
        # Writing backed data points its file name at the file written: keep the user's.
        backed = data_file is not None and getattr(self.adata, "isbacked", False)
        original = self.adata.filename if backed else None
        try:
            for name, write in writers.items():
                write(partials[name])
            for name in writers:
                os.replace(partials[name], os.path.join(dir_path, name))
        finally:
            if backed:
                self.adata.file.filename = original
            for path in partials.values():
                if os.path.exists(path):
                    os.remove(path)

    def _saved_attributes(self) -> dict:
        """The attributes ``save`` writes and ``load`` restores (public, ending in ``_``)."""
        return {
            name: value
            for name, value in self._get_user_attributes()
            if name.endswith("_") and not name.startswith("_")
        }

    def _check_new_data(self, adata) -> None:
        """Model-specific checks of data other than the model's own, before scvi-tools' own."""

    def _warn_outside_training(self, adata) -> None:
        """Warn where new data's continuous covariates lie far from the training values."""

    @classmethod
    def register_manager(cls, adata_manager) -> None:
        adata_manager.written_codes = _written_codes(adata_manager)
        _invalidate_modality_setups(adata_manager.adata)
        super().register_manager(adata_manager)

    def _register_manager_for_instance(self, adata_manager) -> None:
        if not hasattr(adata_manager, "written_codes"):  # kept from setup, if set up then
            adata_manager.written_codes = _written_codes(adata_manager)
            _invalidate_modality_setups(adata_manager.adata)
        super()._register_manager_for_instance(adata_manager)

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        if adata is not None and adata is not self.adata:
            if copy_if_view and adata.is_view:
                # scvi-tools turns the caller's view into a copy in place (and cannot copy a
                # backed one): work on a copy and leave the view as it is
                backed = isinstance(adata, anndata.AnnData) and adata.isbacked
                adata = adata.to_memory() if backed else adata.copy()
            self._check_new_data(adata)
        if adata is None and self.adata is None:
            raise InputError(
                "This model was loaded without data; pass adata= (data organised like the "
                f"training data), or load it with data: `{type(self).__name__}.load(dir, adata)`."
            )
        data = self.adata if adata is None else adata
        # Looked up directly: get_anndata_manager() would transfer the setup to a copy.
        manager = self._per_instance_manager_store.get(self.id, {}).get(
            data.uns.get(_SCVI_UUID_KEY)
        )
        set_up_again = (  # since this model's setup, e.g. for another model or a modality
            manager is not None
            and manager.adata is data
            and (
                data.uns.get(_MANAGER_UUID_KEY) != manager.id
                or _written_codes(manager) != manager.written_codes
            )
        )
        if adata is None or adata is self.adata:
            self._check_own_data(as_new=set_up_again)
        without_data = self.adata is None
        if without_data and manager is not None and manager.adata is not adata:
            # A copy of data given before: scvi-tools would transfer the setup from the
            # model's own data, which it has none of; set the copy up afresh instead.
            _assign_adata_uuid(adata, overwrite=True)
        transfer = _transferring_own_setup(manager, data) if set_up_again else nullcontext()
        try:
            with transfer:
                validated = super()._validate_anndata(adata, copy_if_view=copy_if_view)
            validated_manager = self.get_anndata_manager(validated, required=True)
            if set_up_again:  # registered again: the columns hold this model's codes now
                validated_manager.written_codes = _written_codes(validated_manager)
            changed = changed_obs_keys(validated_manager)
            renamed = renamed_categories(validated_manager, changed) if changed else {}
            if renamed:
                key, mapping = next(iter(renamed.items()))
                shown = ", ".join(f"{o!r} → {n!r}" for n, o in mapping.items() if n != o)
                column = f"{obs_location(validated_manager, key)}[{key!r}]"
                raise InputError(
                    f"obs[{key!r}] was renamed after setup ({shown}); the model knows its "
                    f"categories by the old names. Rename them back, `{column} = "
                    f"{column}.map({mapping!r})`, or set up and train a new model."
                )
            if changed and validated is self.adata:
                columns = ", ".join(f"obs[{key!r}]" for key in changed)
                raise InputError(
                    f"{columns} of the data registered with this model changed after setup, "
                    "and scvi-tools would go on reading the old values. Pass a copy to use the "
                    "new values (`adata=adata.copy()`), or set up and train a new model."
                )
            if changed:  # query relabelled in place: encode it again, as scvi does for copies
                _assign_adata_uuid(validated, overwrite=True)
                validated = super()._validate_anndata(validated, copy_if_view=copy_if_view)
            return validated
        finally:
            if without_data:  # scvi-tools would adopt the first data given as the model's own
                self._adata, self._adata_manager = None, None

    def _check_own_data(self, as_new: bool) -> None:
        """Refuse registered data changed in place since setup (scvi-tools trusts them)."""
        try:
            if as_new:  # a new registration will read them as they are now; warned at setup
                with warnings.catch_warnings(action="ignore"):
                    self._check_new_data(self.adata)
            check_feature_names(self.adata, self.registry_)  # else read by position
        except InputError as error:
            raise InputError(
                f"The data registered with this model changed after setup: {error} Or set "
                f"up and train a new model on the changed data."
            ) from None
        self._check_registered_data()

    def _check_registered_data(self) -> None:
        """scvi-tools checks data once, at setup: refuse data changed in place since.

        Counts normalised, or NaN or infinite values written into a matrix that is not counts.
        """
        for field in self.adata_manager.fields:
            layer_field = getattr(field, "adata_field", field)  # MuData fields wrap one
            is_counts = getattr(layer_field, "is_count_data", None)
            if is_counts is None:  # not a matrix of features
                continue
            matrix = self.adata_manager.get_from_registry(field.registry_key)
            place = "X" if layer_field.attr_key is None else f"layer {layer_field.attr_key!r}"
            if getattr(field, "mod_key", None) is not None:
                place = f"modality {field.mod_key!r} {place}"
            if not is_counts:  # (counts are checked for more below)
                if not all_finite(matrix):
                    raise InputError(
                        f"{place} of the data registered with this model holds NaN or infinite "
                        "values written after setup; fill or drop them, or pass data without."
                    )
                continue
            if not still_counts(matrix):
                raise InputError(
                    f"{place} of the data registered with this model no longer holds raw "
                    "counts (normalised in place after setup?). Keep the counts in a layer and "
                    "pass data that hold them, or set up and train a new model."
                )

    @staticmethod
    def load_registry(dir_path: str, prefix: str | None = None) -> dict:
        """The registry (setup arguments, fields) of a model saved with :meth:`save`.

        Examples
        --------
        >>> Model.load_registry("my_model")["setup_args"]
        """
        files = _file_names(prefix)
        registry = _read_attributes(dir_path, files)["attr_dict"].get("registry_")
        if registry is None:
            raise InputError(f"{_damaged(dir_path)} {files[ATTRIBUTES_FILE]}: no registry.")
        return registry

    @staticmethod
    def view_setup_args(dir_path: str, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` / ``setup_mudata`` arguments of a saved model.

        Examples
        --------
        >>> Model.view_setup_args("my_model")
        """
        registry = SafeSaveMixin.load_registry(dir_path, prefix)
        print(f"{registry.get(_SETUP_METHOD_NAME, 'setup_anndata')}(")
        for key, value in registry[_SETUP_ARGS_KEY].items():
            print(f"    {key}={value!r},")
        print(")")

    def view_anndata_setup(self, adata=None, hide_state_registries: bool = False) -> None:
        """Print the setup of ``adata`` (default: the model's data) with this model.

        A model loaded without data prints its saved setup arguments and sizes.

        Examples
        --------
        >>> model.view_anndata_setup()
        """
        if adata is None and self.adata is None:
            print(f"{type(self).__name__} loaded without data, set up with")
            self.view_setup_method_args()
            fields = self.registry_["field_registries"].values()
            for name, value in {
                k: v for f in fields for k, v in f["summary_stats"].items()
            }.items():
                print(f"    {name}: {value}")
            return
        super().view_anndata_setup(adata, hide_state_registries=hide_state_registries)

    @classmethod
    def convert_legacy_save(cls, *args, **kwargs):
        """Refused: scvi-tools' legacy format is pickled, and scgexp never wrote it.

        scvi-tools' version unpickles the folder it converts (running any code it holds).
        """
        raise InputError(
            f"{cls.__name__} has no legacy save format to convert: scgexp models are saved with "
            f"weights as tensors only since their first version; load them with "
            f"{cls.__name__}.load(dir). (scvi-tools' convert_legacy_save unpickles the folder "
            "it reads, so scgexp does not offer it.)"
        )

    @property
    def training_var_names(self) -> list[str] | dict[str, list[str]]:
        """The features the model was trained on, in order (per modality for MuData).

        New data must hold them (in any order for MultiVAE's and DGEX's ``predict``; in this
        order elsewhere). Also available for a model loaded without data.

        Examples
        --------
        >>> names = ZINBAutoencoder.load("zinb_model").training_var_names
        >>> query = query[:, names].copy()
        """
        names = {
            key: [str(name) for name in value]
            for key, value in registered_features(self.registry_).items()
        }
        return names[None] if None in names else names

    @classmethod
    def _pop_registry(
        cls, attr_dict: dict, dir_path: str, prefix: str | None, method: str = "load"
    ) -> dict:
        """The saved registry, taken out of ``attr_dict``; refused if of another model class."""
        if "registry_" not in attr_dict:
            raise InputError(
                f"{_damaged(dir_path)} {_file_names(prefix)[ATTRIBUTES_FILE]} has no registry."
            )
        registry = attr_dict.pop("registry_")
        saved = registry.get(_MODEL_NAME_KEY, cls.__name__)
        if saved != cls.__name__:
            import scgexp.model

            if not hasattr(getattr(scgexp.model, saved, None), method):
                method = "load"
            elif method.startswith("prepare_query_"):  # the one for the saved model's data
                mudata_model = registry.get(_SETUP_METHOD_NAME) == "setup_mudata"
                method = f"prepare_query_{'mudata' if mudata_model else 'anndata'}"
            raise InputError(
                f"{dir_path} holds a {saved} model, not a {cls.__name__}; load it with "
                f"{saved}.{method}(...)."
            )
        return registry

    @classmethod
    def _set_up_like_reference(
        cls, adata: anndata.AnnData | mudata.MuData, registry: dict, **transfer_kwargs
    ):
        """Register ``adata`` with a trained model's setup (``registry``)."""
        if adata.is_view:
            raise InputError(
                "Loading registers the model's fields in the data, which a view cannot hold; "
                "pass a copy: `adata[...].copy()`."
            )
        try:
            check_feature_names(adata, registry)
        except InputError as error:
            raise InputError(f"{error}{cls._load_hint}") from None
        setup_args = registry[_SETUP_ARGS_KEY]
        obs_args = ("batch_key", "categorical_covariate_keys", "continuous_covariate_keys")
        for setup_arg in () if isinstance(adata, mudata.MuData) else obs_args:  # MultiVAE: own
            keys = setup_args.get(setup_arg) or []
            missing = [
                k for k in ([keys] if isinstance(keys, str) else keys) if k not in adata.obs
            ]
            if missing:
                mapping = setup_arg == "batch_key" and not transfer_kwargs.get("extend_categories")
                raise InputError(
                    f"obs has no column {missing[0]!r}, which the model was trained with (its "
                    f"{setup_arg}). Add it with each cell's value under that name"
                    + (
                        "; for batches the model never saw, map the cells with "
                        f"{cls.__name__}.load_query_data(adata, dir)."
                        if mapping
                        else "."
                    )
                )
        setup_method = getattr(cls, registry.get(_SETUP_METHOD_NAME, "setup_anndata"))
        setup_method(
            adata, source_registry=registry, **transfer_kwargs, **registry[_SETUP_ARGS_KEY]
        )

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: anndata.AnnData | mudata.MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        **scvi_kwargs,
    ):
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data organised like the training data (same features, same setup keys). ``None``
            loads the data saved with the model, if any, and otherwise loads the model without
            data (enough for methods that take new data as an argument).
        accelerator, device
            Where to put the model, as in :meth:`scvi.model.base.BaseModelClass.load`.
        prefix
            The ``prefix`` the model was saved with.
        **scvi_kwargs
            scvi-tools' ``backup_url``, ``datamodule`` and ``allowed_classes_names_list`` are
            refused (a model is loaded from a local folder, without unpickling).

        Examples
        --------
        >>> model = Model.load("my_model", adata=query)
        """
        if scvi_kwargs:
            download = (
                " Download the folder first and pass its path."
                if scvi_kwargs.get("backup_url")
                else ""
            )
            raise InputError(
                f"scgexp's load does not take {', '.join(sorted(scvi_kwargs))}: it reads a "
                f"folder written by save (dir_path, adata, accelerator, device, prefix).{download}"
            )
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        attr_dict, state = _read_saved_model(dir_path, prefix)
        if adata is None:
            files, damaged = _file_names(prefix), _damaged(dir_path)
            found = [
                name
                for name in (files[ADATA_FILE], files[MDATA_FILE])
                if os.path.exists(os.path.join(dir_path, name))
            ]
            if len(found) > 1:
                raise InputError(
                    f"{dir_path} holds both {found[0]} and {found[1]}; which one was saved "
                    "with this model is unclear. Pass adata= or remove the other file."
                )
            if found:
                reader = anndata.read_h5ad if found[0] == files[ADATA_FILE] else mudata.read_h5mu
                try:
                    adata = reader(os.path.join(dir_path, found[0]))
                except (OSError, KeyError) as error:  # h5py's errors for truncated files
                    raise InputError(f"{damaged} {found[0]}: {error}") from None
        registry = cls._pop_registry(attr_dict, dir_path, prefix)
        if adata is not None:
            cls._set_up_like_reference(adata, registry)
        model = _initialize_model(
            cls, adata if adata is not None else False, registry, attr_dict, None
        )
        _load_weights(model.module, state, f"{str(dir_path)!r} holds a {cls.__name__}")
        if adata is not None:
            model._warn_outside_training(adata)
        model.to_device(torch_device)
        model.module.eval()
        return model
