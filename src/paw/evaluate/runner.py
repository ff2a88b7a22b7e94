"""`evaluate_model`: score a base model or a LoRA adapter on tasks and write the result files.

Per (model, task), under `output_dir/<model label>/<task>/`: `records.jsonl` (one line per item) and
`results.json` (config, versions, metrics, timing, memory; written last, so its presence marks a finished
result). Across everything in `output_dir`: `results.csv` (one row per model and task) and `results.md`.
A finished result whose fingerprint (model, adapter contents, task, split, sampling, data) matches is reused
unless `force`. All inputs are checked before any model is loaded, so a bad task, split, sample ratio or
adapter stops the run with one line and leaves earlier results as they were.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paw.errors import PawError
from paw.evaluate.distributed import is_global_zero, score_rows_lightning
from paw.evaluate.metrics import compute_metrics, save_records
from paw.evaluate.scoring import make_records, model_max_length, pack_items, score_rows
from paw.io import atomic_write_json, atomic_write_text
from paw.tasks.items import MCItem

RESULTS_FILE = "results.json"
RECORDS_FILE = "records.jsonl"
CSV_COLUMNS = (
    "model", "task", "split", "n", "acc", "acc_stderr", "acc_ci_low", "acc_ci_high",
    "acc_norm", "acc_norm_stderr", "acc_norm_ci_low", "acc_norm_ci_high",
    "questions_per_s", "tokens_per_s", "wall_s", "adapter", "base_model",
)  # fmt: skip


@dataclass(frozen=True)
class EvalTarget:
    """What is evaluated: a base model, or an adapter on a base."""

    name: str  # as the user gave it
    base: str  # base model name or path
    adapter: Path | None
    label: str  # folder name under output_dir

    def identity(self) -> dict[str, Any]:
        """What makes two results comparable: the model, and the adapter's exact files."""
        identity: dict[str, Any] = {"base": self.base, "adapter": str(self.adapter) if self.adapter else None}
        if self.adapter is not None:
            digest = hashlib.sha256()
            for path in sorted(p for p in self.adapter.iterdir() if p.is_file()):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
            identity["adapter_sha256"] = digest.hexdigest()
        return identity


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text.strip().rstrip("/")).strip("_") or "model"


def resolve_target(model_name_or_adapter: str | Path, base_model_path: str | Path | None) -> EvalTarget:
    """A base model name/path, or an adapter folder evaluated on `base_model_path` (default: its recorded base)."""
    from paw.models import is_adapter_dir, read_adapter_base, read_adapter_config

    name = str(model_name_or_adapter)
    if not is_adapter_dir(name):
        if base_model_path is not None:
            raise PawError(
                f"base_model_path is only for adapters, but {name!r} is not an adapter folder "
                "(no adapter_config.json); drop base_model_path or pass the adapter folder"
            )
        return EvalTarget(name, name, None, _slug(Path(name).name if Path(name).exists() else name))
    adapter = Path(name).resolve()
    read_adapter_config(adapter)
    base = str(base_model_path) if base_model_path is not None else read_adapter_base(adapter)
    base_label = Path(base).name if Path(base).exists() else base
    return EvalTarget(name, base, adapter, _slug(f"{adapter.name}@{base_label}"))


def _task_items(
    tasks: list[str], split: str | None, sample_ratio: float, limit: int | None, data_source: str, data_dir: Any
) -> dict[str, tuple[str, list[MCItem]]]:
    """task -> (split, items) after sampling and limit, for every task, before any model work."""
    from paw.tasks import get_task, load_items, sample_items

    if not tasks:
        raise PawError("no tasks given; pass at least one --dataset, e.g. --dataset arc-challenge")
    if limit is not None and limit < 1:
        raise PawError(f"limit must be at least 1, got {limit}; drop --limit to score every item")
    out = {}
    for task in tasks:
        spec = get_task(task)
        task_split = split or spec.default_eval_split
        items = sample_items(load_items(spec.name, task_split, source=data_source, data_dir=data_dir), sample_ratio)
        items = items[:limit] if limit is not None else items
        if not items:
            raise PawError(
                f"task {spec.name} split {task_split} has no items from source {data_source!r}; "
                "choose another split or data source"
            )
        out[spec.name] = (task_split, items)
    return out


def _fingerprint(target: EvalTarget, task: str, split: str, settings: dict[str, Any], items: list[MCItem]) -> str:
    blob = json.dumps(
        {"model": target.identity(), "task": task, "split": split, **settings, "ids": [i.id for i in items]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _finished(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("fingerprint") == fingerprint else None


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import paw

    return {"paw": paw.__version__, **{name: version(name) for name in ("torch", "transformers", "peft", "lightning")}}


def evaluate_model(
    model_name_or_adapter: str | Path,
    tasks: list[str],
    *,
    sample_ratio: float = 1.0,
    batch_size: int | str = 8,
    split: str | None = None,
    limit: int | None = None,
    base_model_path: str | Path | None = None,
    output_dir: str | Path = "results",
    force: bool = False,
    devices: int = 1,
    strategy: str = "auto",
    data_source: str = "embedded",
    data_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Evaluate one base model or adapter on `tasks`; return {"model", "tasks": {task: result}, "csv", "markdown"}.

    Each task result holds `metrics` (see `compute_metrics`), `records` and `results` (file paths), `timing`,
    `memory` and `reused`. With several devices or a non-default strategy the scoring runs as a Lightning job;
    only rank 0 writes files.
    """
    from paw.models import attached_adapter, load_base
    from paw.models.load import resolve_device, resolve_dtype

    output_dir = Path(output_dir)
    target = resolve_target(model_name_or_adapter, base_model_path)
    task_items = _task_items(list(tasks), split, sample_ratio, limit, data_source, data_dir)
    settings = {"sample_ratio": sample_ratio, "limit": limit, "data_source": data_source,
                "data_dir": str(data_dir) if data_dir else None,
                "dtype": str(resolve_dtype(dtype, resolve_device(None)))}  # "auto" differs by machine  # fmt: skip
    plan = {}
    for task, (task_split, items) in task_items.items():
        folder = output_dir / target.label / task
        fingerprint = _fingerprint(target, task, task_split, settings, items)
        plan[task] = (folder, fingerprint, None if force else _finished(folder / RESULTS_FILE, fingerprint))

    # A reused result's file paths are where it lies now (it may have been written from another directory).
    results: dict[str, dict[str, Any]] = {
        task: reused | {"reused": True, "records": str(folder / RECORDS_FILE), "results": str(folder / RESULTS_FILE)}
        for task, (folder, _, reused) in plan.items() if reused is not None
    }
    todo = [task for task in plan if task not in results]
    if todo:
        loaded = load_base(target.base, models_dir=models_dir, dtype=dtype)
        run = {"batch_size": batch_size, "devices": devices, "strategy": strategy}
        with attached_adapter(loaded, target.adapter) if target.adapter else nullcontext(loaded.model) as model:
            for task in todo:
                task_split, items = task_items[task]
                folder, fingerprint, _ = plan[task]
                results[task] = _evaluate_task(
                    model, loaded, target, task, task_split, items, folder, fingerprint, settings | run
                )
    summary = {"model": target.label, "tasks": {task: results[task] for task in plan}}
    if is_global_zero():
        summary |= write_tables(output_dir)
    return summary


def _evaluate_task(
    model: Any,
    loaded: Any,
    target: EvalTarget,
    task: str,
    split: str,
    items: list[MCItem],
    folder: Path,
    fingerprint: str,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Score one task, write its files (rank 0), return its result."""
    from paw.resources import measure

    max_length = model_max_length(model, loaded.tokenizer)
    distributed = config["devices"] != 1 or config["strategy"] != "auto"
    with measure() as usage:
        rows = pack_items(loaded.tokenizer, items, max_length)
        if distributed:
            scores = score_rows_lightning(
                model, rows, batch_size=config["batch_size"], devices=config["devices"], strategy=config["strategy"]
            )
        else:
            desc = f"eval {target.label} {task}"
            scores = score_rows(model, rows, batch_size=config["batch_size"], progress_desc=desc)
        records = make_records(items, scores, rows)
    tokens = sum(len(row) for row in rows)  # tokens run through the model (each shared prefix once)
    result = {
        "model": target.label,
        "model_name": target.name,
        "base_model": target.base,
        "adapter": str(target.adapter) if target.adapter else None,
        "task": task,
        "split": split,
        "fingerprint": fingerprint,
        "config": config | {"max_length": max_length, "device": str(loaded.device), "model_dtype": str(loaded.dtype)},
        "versions": _versions(),
        "metrics": compute_metrics(records),
        "timing": {
            "wall_s": round(usage.wall_s, 3),
            "questions_per_s": round(len(items) / usage.wall_s, 3),
            "tokens_per_s": round(tokens / usage.wall_s, 1),
            "tokens": tokens,
        },
        "memory": {
            "peak_rss_mb": round(usage.peak_rss_mb, 1),
            "peak_gpu_allocated_mb": None if usage.peak_gpu_mb is None else round(usage.peak_gpu_mb, 1),
        },
        "records": str(folder / RECORDS_FILE),
        "results": str(folder / RESULTS_FILE),
    }
    if is_global_zero():
        save_records(folder / RECORDS_FILE, records)
        atomic_write_json(folder / RESULTS_FILE, result)  # last: its presence marks the result finished
    return result | {"reused": False}


def _rows(output_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(output_dir.glob(f"*/*/{RESULTS_FILE}")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        metrics, timing = result.get("metrics", {}), result.get("timing", {})
        rows.append({**{k: result.get(k) for k in ("model", "task", "split", "adapter", "base_model")},
                     **{k: metrics.get(k) for k in CSV_COLUMNS if k in metrics},
                     **{k: timing.get(k) for k in ("questions_per_s", "tokens_per_s", "wall_s")}})  # fmt: skip
    return rows


def write_tables(output_dir: str | Path) -> dict[str, str]:
    """Rebuild `results.csv` and `results.md` from every finished result under `output_dir`."""
    output_dir = Path(output_dir)
    rows = _rows(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(output_dir / "results.csv", buffer.getvalue())
    md_path = atomic_write_text(output_dir / "results.md", markdown_table(rows))
    return {"csv": str(csv_path), "markdown": str(md_path)}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, task): accuracy with its 95% interval, acc_norm, n and speed."""
    lines = [
        "| model | task | split | n | acc (95% CI) | acc_norm (95% CI) | questions/s |",
        "|---|---|---|---:|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['split']} | {r['n']} "
            f"| {r['acc']:.4f} ({r['acc_ci_low']:.3f}–{r['acc_ci_high']:.3f}) "
            f"| {r['acc_norm']:.4f} ({r['acc_norm_ci_low']:.3f}–{r['acc_norm_ci_high']:.3f}) "
            f"| {r['questions_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"
