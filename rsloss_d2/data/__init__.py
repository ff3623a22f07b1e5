"""Datasets: the synthetic shapes generator and its Detectron2 registration."""
from .datasets import (  # noqa: F401
    DEFAULT_SIZES,
    DatasetFileError,
    check_dataset_files,
    datasets_root,
    register_shapes_datasets,
)

register_shapes_datasets()
