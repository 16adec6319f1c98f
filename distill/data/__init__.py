"""Datasets as WebDataset shards: packing, metadata, loaders and augmentation."""

from .loader import CorruptCounter, check_shards, collate_keys, load_split, train_loader, val_loader
from .meta import DataError, DatasetMeta, load_meta
from .pack import ensure_shards, pack_source

__all__ = ["CorruptCounter", "DataError", "check_shards", "DatasetMeta", "collate_keys", "ensure_shards", "load_meta",
           "load_split", "pack_source", "train_loader", "val_loader"]
