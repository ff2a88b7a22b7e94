from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests are offline and quiet, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("SWANLAB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_model(tiny_root: Path):
    """Factory: `tiny_model("llama", hidden=96)` -> folder of a saved tiny random model (built once per session)."""

    def build(arch: str, **kwargs) -> Path:
        return make_model_dir(tiny_root, arch, **kwargs)

    return build


@pytest.fixture(autouse=True)
def paw_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Embedded-model conversions are cached per machine (PAW_HOME from the environment, if set);
    everything else a test writes goes to its own temp folder."""
    home = Path(os.environ.get("PAW_HOME") or tmp_path_factory.getbasetemp() / "paw_home")
    monkeypatch.setenv("PAW_HOME", str(home))
    return home
