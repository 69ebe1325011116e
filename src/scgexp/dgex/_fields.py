"""Registry field that records which genes are landmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import rich
from anndata import AnnData
from scvi.data.fields import BaseAnnDataField

from scgexp.data._checks import InputError

LANDMARK_REGISTRY_KEY = "landmarks"


class LandmarkField(BaseAnnDataField):
    """Stores the landmark/target split of ``var[landmark_key]`` in the registry.

    The field loads no data into minibatches: the module selects the columns itself.
    """

    def __init__(self, landmark_key: str):
        super().__init__()
        self._attr_key = landmark_key

    registry_key = LANDMARK_REGISTRY_KEY
    attr_name = "var"
    is_empty = False

    @property
    def attr_key(self) -> str:
        return self._attr_key

    def get_data_registry(self) -> dict:
        return {}

    def validate_field(self, adata: AnnData) -> None:
        key = self.attr_key
        if key not in adata.var:
            columns = ", ".join(map(repr, adata.var.columns)) or "none"
            raise InputError(
                f"var has no column {key!r} (its columns: {columns}). Name the column that "
                "marks the landmark genes with landmark_key=, or mark them first, e.g. "
                f"`scgexp.data.mark_landmarks(adata, genes, key={key!r})`."
            )
        column = adata.var[key]
        if not pd.api.types.is_bool_dtype(column):
            values = set(column.dropna().astype(str).str.lower())
            fix = f"e.g. `adata.var[{key!r}] = adata.var[{key!r}].isin([...])`"
            if values and values <= {"0", "1", "0.0", "1.0"}:
                fix = f"`adata.var[{key!r}] = pd.to_numeric(adata.var[{key!r}]) == 1`"
            elif values and values <= {"true", "false"}:
                fix = (
                    f"`adata.var[{key!r}] = adata.var[{key!r}].astype(str).str.lower() == 'true'`"
                )
            raise InputError(
                f"var[{key!r}] holds {column.dtype} values; it must be boolean (True for "
                f"landmark genes, False for targets): {fix}."
            )
        if column.isna().any():
            raise InputError(
                f"var[{key!r}] has {int(column.isna().sum())} missing values; mark each gene "
                "True (landmark) or False (target)."
            )
        column = column.astype(bool)  # also categorical or nullable booleans
        if not column.any():
            raise InputError(f"No gene is marked as a landmark in var[{key!r}].")
        if column.all():
            raise InputError(
                f"Every gene is marked as a landmark in var[{key!r}]: there is nothing to predict."
            )
        if not adata.var_names.is_unique:
            raise InputError("var_names are not unique; call `adata.var_names_make_unique()`.")

    def register_field(self, adata: AnnData) -> dict:
        self.validate_field(adata)
        mask = adata.var[self.attr_key].to_numpy(dtype=bool)
        return {
            "landmark_index": np.flatnonzero(mask).tolist(),
            "target_index": np.flatnonzero(~mask).tolist(),
            "landmark_names": adata.var_names[mask].tolist(),
            "target_names": adata.var_names[~mask].tolist(),
        }

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        key = self.attr_key
        fix = (
            f"Mark the model's landmarks (`adata.var[{key!r}] = adata.var_names.astype(str)"
            ".isin(model.landmark_names.astype(str))`), or load the model without data and "
            "call `model.predict(adata)`, which needs only the landmark genes."
        )
        if key not in adata_target.var:
            raise InputError(f"var has no column {key!r}. {fix}")
        new_state = self.register_field(adata_target)
        if list(map(str, new_state["landmark_names"])) != list(
            map(str, state_registry["landmark_names"])
        ):  # as text: integer gene IDs come back from .h5ad as strings
            raise InputError(
                f"var[{key!r}] marks other landmarks than the model was trained with. {fix} "
                "For models with different landmarks on the same data, give each its own "
                "column: `scgexp.data.mark_landmarks(adata, genes, key='landmark_2')` and "
                "`DGEX.setup_anndata(adata, landmark_key='landmark_2')`."
            )
        return new_state

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {
            "n_landmarks": len(state_registry["landmark_names"]),
            "n_targets": len(state_registry["target_names"]),
        }

    def view_state_registry(self, state_registry: dict) -> rich.table.Table:
        table = rich.table.Table(title="Landmark genes")
        table.add_column("Landmarks")
        table.add_column("Targets")
        table.add_row(
            str(len(state_registry["landmark_names"])), str(len(state_registry["target_names"]))
        )
        return table
