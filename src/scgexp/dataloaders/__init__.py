"""Data paths for training: in-memory tensors, streaming from disk, and the split that picks."""

from scgexp.dataloaders._loaders import InMemoryDataLoader, StreamingDataLoader
from scgexp.dataloaders._splitter import DataMode, DataSplitter, resolve_data_mode
from scgexp.dataloaders._store import TensorStore

__all__ = [
    "DataMode",
    "DataSplitter",
    "InMemoryDataLoader",
    "StreamingDataLoader",
    "TensorStore",
    "resolve_data_mode",
]
