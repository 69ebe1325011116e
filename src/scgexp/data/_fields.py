"""scvi-tools data fields with fixes scgexp's models rely on."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData
from scvi.data import fields


class CategoricalJointObsField(fields.CategoricalJointObsField):
    """:class:`scvi.data.fields.CategoricalJointObsField` that encodes new data by value.

    In scvi-tools 1.4 a query column whose pandas categories are the training categories in
    another order keeps its own codes (pandas treats the two unordered dtypes as equal, so the
    recoding is skipped), and its cells are decoded as the wrong category. Here the registered
    copy of the columns is turned into plain values first, so every query is encoded by value.
    The user's ``obs`` is not changed.
    """

    def _make_array_categorical(self, adata: AnnData, category_dict: dict | None = None) -> dict:
        if category_dict is not None:
            frame = getattr(adata, self.attr_name)[self.attr_key]  # scvi-tools' own copy
            for key in self.attr_keys:
                if isinstance(frame[key].dtype, pd.CategoricalDtype):
                    frame[key] = frame[key].astype(frame[key].cat.categories.dtype)
        return super()._make_array_categorical(adata, category_dict=category_dict)


MuDataCategoricalJointObsField = fields.MuDataWrapper(CategoricalJointObsField)
