"""Experiment reports: `summary.md`, `summary.png` and `results.csv`, rebuilt from `results.json` and the
per-item records it points to, so every number in a report can be traced to a step's result files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from paw.errors import PawError
from paw.evaluate.metrics import ItemRecord, load_records, mcnemar, paired_bootstrap
from paw.io import atomic_write_text

# Below this target-LoRA gain (accuracy points) recovery is a ratio of noise: it is shown as "not judged".
MIN_TRAINED_GAIN_POINTS = 3.0

# Evaluation labels in report order, with the column titles a reader sees.
FIXED_COLUMNS = (("source_base", "source base"), ("source_lora", "source + LoRA"), ("target_base", "target base"))
TRAINED_COLUMN = ("target_lora", "target + trained LoRA")


def transferred_label(method: str) -> str:
    return f"transferred/{method}"


def read_results(experiment_dir: Path) -> dict[str, Any]:
    path = experiment_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PawError(f"{experiment_dir} is not a PAW experiment (no results.json); pass a folder made by `paw run`") from None
    except json.JSONDecodeError as exc:
        raise PawError(f"{path} is not valid JSON ({exc.msg}); re-run `paw run` with continue to rebuild it") from None


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    methods = results.get("methods", [])
    return [*FIXED_COLUMNS, *((transferred_label(m), f"transferred ({m})") for m in methods), TRAINED_COLUMN]


def _records(experiment_dir: Path, results: dict[str, Any], label: str, task: str) -> list[ItemRecord] | None:
    entry = results.get("evaluations", {}).get(label, {}).get(task)
    return load_records(experiment_dir / entry["records"]) if entry else None


def _common(*runs: list[ItemRecord]) -> list[list[ItemRecord]]:
    """The runs restricted to the items all of them scored (a subset run compares on its own items)."""
    ids = set.intersection(*({r.id for r in run} for run in runs))
    return [[r for r in run if r.id in ids] for run in runs]


def _interval(runs: list[list[ItemRecord]], statistic: Any, metric: str) -> dict[str, float]:
    """A statistic of the runs' accuracies (in points) with its paired bootstrap interval."""
    result = paired_bootstrap(_common(*runs), statistic, metric=metric)
    return {k: 100 * result[k] for k in ("value", "low", "high")}


def analyse(experiment_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Per task: accuracy with interval per evaluation; per method: gains, recovery, retention, McNemar."""
    metric = results.get("metric", "acc")
    analysis: dict[str, Any] = {}
    for task in results["tasks"]:
        runs = {label: _records(experiment_dir, results, label, task) for label, _ in _columns(results)}
        accuracy = {label: _interval([run], lambda a: a, metric) | {"n": len(run)}
                    for label, run in runs.items() if run}
        base, trained = runs.get("target_base"), runs.get("target_lora")
        source_base, source_lora = runs.get("source_base"), runs.get("source_lora")
        trained_gain = _interval([base, trained], lambda b, t: t - b, metric) if base and trained else None
        source_gain = (_interval([source_base, source_lora], lambda b, t: t - b, metric)
                       if source_base and source_lora else None)
        methods = {}
        for method in results.get("methods", []):
            moved = runs.get(transferred_label(method))
            if not moved or not base:
                continue
            row: dict[str, Any] = {"gain": _interval([base, moved], lambda b, m: m - b, metric),
                                   "mcnemar": mcnemar(*_common(base, moved), metric=metric)}
            if trained_gain is not None:
                if trained_gain["value"] >= MIN_TRAINED_GAIN_POINTS:
                    rec = _interval([base, trained, moved], lambda b, t, m: (m - b) / (t - b), metric)
                    row["recovery"] = {"judged": True, **{k: v / 100 for k, v in rec.items()}}
                else:
                    row["recovery"] = {"judged": False, "note": (
                        f"target-trained gain {trained_gain['value']:+.1f} pts is below {MIN_TRAINED_GAIN_POINTS:.0f}: "
                        "too small to judge recovery")}
            # Retention needs a real source gain to be a ratio of anything.
            if source_gain is not None and source_gain["value"] >= MIN_TRAINED_GAIN_POINTS:
                row["retention"] = row["gain"]["value"] / source_gain["value"]
            methods[method] = row
        analysis[task] = {"accuracy": accuracy, "methods": methods, "trained_gain": trained_gain,
                          "source_gain": source_gain}
    return analysis


def _short(model: str) -> str:
    """A model as a reader names it: the last path component of a folder or hub id."""
    return model.rstrip("/").split("/")[-1]


def _ratio(rec: dict[str, Any]) -> str:
    return f"{rec['value']:.2f} [{rec['low']:.2f}, {rec['high']:.2f}]"


def _cell(entry: dict[str, Any] | None, signed: bool = False) -> str:
    if not entry:
        return "—"
    f = "+.1f" if signed else ".1f"
    return f"{entry['value']:{f}} [{entry['low']:{f}}, {entry['high']:{f}}]"


def summary_markdown(results: dict[str, Any], analysis: dict[str, Any]) -> str:
    columns = _columns(results)
    metric = results.get("metric", "acc")
    out = io.StringIO()
    w = out.write
    w(f"# PAW experiment: {_short(results['source_model'])} → {_short(results['target_model'])}\n\n")
    w(f"A LoRA adapter was trained on **{_short(results['source_model'])}** (the source), moved to "
      f"**{_short(results['target_model'])}** (the target) with {', '.join(f'`{m}`' for m in results.get('methods', []))}, "
      "and compared with a LoRA trained directly on the target (the upper bound). "
      f"Accuracy is lm-evaluation-harness `{metric}` in percent, on the same questions for every model, with a 95% "
      "bootstrap interval over questions.\n\n")
    w(f"- Source: `{results['source_model']}`\n- Target: `{results['target_model']}`\n")
    w(f"- Experiment: `{results['experiment']}`\n- Tasks: {', '.join(results['tasks'])} "
      f"(split: {results.get('split') or 'task default'}, sample ratio {results.get('sample_ratio', 1.0)})\n\n")

    w("## Accuracy\n\n")
    w("| task | n | " + " | ".join(title for _, title in columns) + " |\n")
    w("|---|---:|" + "---:|" * len(columns) + "\n")
    for task, entry in analysis.items():
        n = max((a["n"] for a in entry["accuracy"].values()), default=0)
        w(f"| {task} | {n} | " + " | ".join(_cell(entry["accuracy"].get(label)) for label, _ in columns) + " |\n")

    w("\n## What the transfer kept\n\n")
    w("**Recovery** R = (transferred − target base) / (target-trained − target base): 1 means the transferred "
      "adapter is as good as one trained on the target, 0 means it adds nothing. It is reported only where the "
      f"target-trained LoRA gains at least {MIN_TRAINED_GAIN_POINTS:.0f} points. **Retention** is the transferred "
      "gain over the source LoRA's own gain. McNemar's exact test asks whether transferred and target base differ "
      "on the same questions (p < 0.05: the difference is unlikely to be chance).\n\n")
    w("| task | method | source LoRA gain | trained gain | transferred gain | recovery R | retention | "
      "McNemar p |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
    notes = []
    for task, entry in analysis.items():
        for method, row in entry["methods"].items():
            rec = row.get("recovery")
            if rec and rec["judged"]:
                rec_text = _ratio(rec)
            else:
                rec_text = "not judged" if rec else "—"
                if rec:
                    notes.append(f"{task}: {rec['note']}.")
            retention = row.get("retention")
            w(f"| {task} | {method} | {_cell(entry['source_gain'], True)} | {_cell(entry['trained_gain'], True)} | "
              f"{_cell(row['gain'], True)} | {rec_text} | {'—' if retention is None else f'{retention:.2f}'} | "
              f"{row['mcnemar']['p_value']:.3g} |\n")
    for note in sorted(set(notes)):
        w(f"\n> {note}\n")
    w("\nGains are in accuracy points, target minus base on the same questions, with 95% paired bootstrap "
      "intervals.\n")

    w("\n## Steps\n\n| step | what | status | wall time | peak RAM | peak GPU |\n|---|---|---|---:|---:|---:|\n")
    for step in results.get("steps", []):
        gpu = step.get("peak_gpu_mb")
        w(f"| {step['number']} | {step['title']} | {step['status']} | {step.get('wall_s', 0):.1f} s | "
          f"{step.get('peak_rss_mb', 0):.0f} MB | {'—' if gpu is None else f'{gpu:.0f} MB'} |\n")
    w("\nEach step's inputs, outputs and per-question records are under `steps/`; `results.json` indexes them.\n")
    return out.getvalue()


CSV_FIELDS = ["experiment", "source_model", "target_model", "task", "evaluation", "metric", "accuracy", "low",
              "high", "n", "recovery", "recovery_low", "recovery_high"]


def csv_rows(results: dict[str, Any], analysis: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task, entry in analysis.items():
        for label, acc in entry["accuracy"].items():
            rec = entry["methods"].get(label.split("/", 1)[1], {}).get("recovery") if label.startswith("transferred/") else None
            judged = bool(rec and rec.get("judged"))
            rows.append({
                "experiment": results["experiment"], "source_model": results["source_model"],
                "target_model": results["target_model"], "task": task, "evaluation": label,
                "metric": results.get("metric", "acc"), "accuracy": round(acc["value"], 3), "low": round(acc["low"], 3),
                "high": round(acc["high"], 3), "n": acc["n"],
                "recovery": round(rec["value"], 4) if judged else "",
                "recovery_low": round(rec["low"], 4) if judged else "",
                "recovery_high": round(rec["high"], 4) if judged else "",
            })
    return rows


def _csv_text(rows: list[dict[str, Any]], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def summary_figure(results: dict[str, Any], analysis: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(results)
    tasks = list(analysis)
    fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(columns)
    colors = plt.get_cmap("tab10")
    for i, (label, title) in enumerate(columns):
        xs, ys, errs = [], [], [[], []]
        for t, task in enumerate(tasks):
            acc = analysis[task]["accuracy"].get(label)
            if acc:
                xs.append(t + (i - (len(columns) - 1) / 2) * width)
                ys.append(acc["value"])
                errs[0].append(acc["value"] - acc["low"])
                errs[1].append(acc["high"] - acc["value"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=title, color=colors(i))
        for x, y in zip(xs, ys):
            ax.text(x, y + 1, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(f"{results.get('metric', 'acc')} (%) with 95% interval")
    ax.set_title(f"{_short(results['source_model'])} → {_short(results['target_model'])}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    ax.set_ylim(0, 100)

    steps = results.get("steps", [])
    names = [f"{s['number']}. {s['title']}" for s in steps]
    ax_time.barh(names, [s.get("wall_s", 0) for s in steps], color=[colors(0) if s["status"] == "ran" else "lightgray"
                                                                   for s in steps])
    ax_time.invert_yaxis()
    ax_time.set_xlabel("wall time (s); gray: reused from an earlier run")
    ax_time.set_title("time per step")
    ax_time.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_reports(experiment_dir: str | Path, project_csv: str | Path | None = None) -> dict[str, Any]:
    """(Re)write summary.md, summary.png and results.csv of one experiment; append its rows to `project_csv`."""
    experiment_dir = Path(experiment_dir)
    results = read_results(experiment_dir)
    analysis = analyse(experiment_dir, results)
    atomic_write_text(experiment_dir / "summary.md", summary_markdown(results, analysis))
    rows = csv_rows(results, analysis)
    atomic_write_text(experiment_dir / "results.csv", _csv_text(rows))
    summary_figure(results, analysis, experiment_dir / "summary.png")
    if project_csv is not None:
        project_csv = Path(project_csv)
        existing = project_csv.read_text() if project_csv.exists() else ""
        atomic_write_text(project_csv, existing + _csv_text(rows, header=not existing))
    return analysis


def comparison_markdown(experiment_dirs: list[Path]) -> str:
    """One table across experiments: per (experiment, task, method) the accuracies, gain and recovery."""
    lines = ["| experiment | task | method | target base | transferred | target-trained | recovery R [95% CI] |",
             "|---|---|---|---:|---:|---:|---:|"]
    for folder in experiment_dirs:
        results = read_results(folder)
        for task, entry in analyse(folder, results).items():
            acc = entry["accuracy"]
            for method, row in entry["methods"].items():
                rec = row.get("recovery")
                rec_text = _ratio(rec) if rec and rec["judged"] else "not judged"
                lines.append(f"| {results['experiment']} | {task} | {method} | {_cell(acc.get('target_base'))} | "
                             f"{_cell(acc.get(transferred_label(method)))} | {_cell(acc.get('target_lora'))} | {rec_text} |")
    return "\n".join(lines) + "\n"

