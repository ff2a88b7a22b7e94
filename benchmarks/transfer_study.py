"""The transfer-quality study (issue 7): every method, both directions, five tasks, on the embedded models.

    python benchmarks/transfer_study.py                      # the whole study; re-runs reuse finished parts
    python benchmarks/transfer_study.py --eval_items 0       # full evaluation splits (slow on a CPU)
    python benchmarks/transfer_study.py --stage report       # rebuild docs/results from finished parts

For each model and task a LoRA is trained on the task's train split and evaluated with its base; for each
direction (source -> target), task and method the source LoRA is moved to the target and evaluated there. The
numbers (recovery R, retention, gains, McNemar) come from `paw.report`'s analysis of the per-item records, exactly
as in a pipeline experiment's summary. Everything lands under `--study_dir`, keyed by its inputs (transfers also
by the source of `paw.transfer`, so a changed method is re-run), so an interrupted study continues where it
stopped; `--stage report` writes `docs/results/transfer_study.{json,csv,md}` and `transfer_recovery.png`.

Methods: the transfer methods of `paw.transfer` plus `paw+distill` (paw, then `--distill_steps` of distillation
against the source+LoRA teacher). Ablations of paw (`--ablations`, on `--ablation_tasks` in the first direction):
calibration prompts 32/128/512, layer map by relative depth instead of CKA, no scale fit, attention-only and
MLP-only modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paw.errors import PawError
from paw.report.summary import MIN_TRAINED_GAIN_POINTS as MIN_GAIN_POINTS

TASKS = ("arc-easy", "arc-challenge", "piqa", "winogrande", "hellaswag")
MODELS = ("gemma3-270m", "smollm2-135m")
METHODS = ("copy", "lora-x", "cross-lora", "random", "paw", "paw+distill")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# name -> transfer_adapter keyword arguments that differ from the study's paw settings
ABLATIONS: dict[str, dict[str, Any]] = {
    "calibration-32": {"calibration_size": 32},
    "calibration-512": {"calibration_size": 512},
    "depth-map": {"layer_map": "depth"},
    "no-scale-fit": {"fit_scale": False},
    "attention-only": {"modules": ATTENTION},
    "mlp-only": {"modules": MLP},
}


@dataclass
class StudyConfig:
    study_dir: Path
    results_dir: Path
    tasks: list[str]
    models: list[str]
    methods: list[str]
    eval_items: int  # evaluation items per task (a fixed random sample, the same for every model); 0 = all
    train_steps: int
    train_batch_size: int
    lr: float
    model_lr: dict[str, float]  # per-model learning rates overriding `lr`
    preset: str
    train_precision: str
    calibration_size: int
    distill_steps: int
    distill_lr: float
    dtype: str
    eval_batch_size: int
    ablations: bool
    ablation_tasks: list[str]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _transfer_code_key() -> str:
    """A digest of `paw.transfer`'s source: a cached transfer made by other code is not reused."""
    import paw.transfer

    folder = Path(paw.transfer.__file__).parent
    return _key(*(path.read_text() for path in sorted(folder.glob("*.py"))))


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} study: {message}", flush=True)


# --- training and evaluation ---------------------------------------------------------------------------


def train(config: StudyConfig, model: str, task: str) -> dict[str, Any]:
    """The task's LoRA on `model` (reused when an identical run finished before)."""
    from paw.models import load_base
    from paw.train import TrainConfig, train_lora

    result = train_lora(TrainConfig(
        model=model, datasets=[task], batch_size=config.train_batch_size, max_steps=config.train_steps,
        lr=config.model_lr.get(model, config.lr), preset=config.preset, precision=config.train_precision,
        max_length=256, checkpoint_every_n_steps=0, output_dir=str(config.study_dir / "train"),
        swanlab_mode="disabled"), model=load_base(model, dtype=config.dtype))
    info = result.info
    return {"adapter": str(result.adapter_dir), "steps": result.steps, "final_loss": result.final_loss,
            **{k: info.get(k) for k in ("wall_time_s", "tokens", "peak_memory_mb")}}


def eval_sample_ratio(config: StudyConfig, task: str) -> float:
    from paw.tasks import load_items

    if not config.eval_items:
        return 1.0
    return min(1.0, config.eval_items / len(load_items(task)))


def evaluate(config: StudyConfig, model: str, task: str, adapter: str | None, label: str) -> dict[str, Any]:
    """One evaluation on the study's fixed sample of the task's evaluation split; returns its result entry."""
    from paw.evaluate import evaluate_model

    out = config.study_dir / "eval" / model / task / label
    result = evaluate_model(adapter or model, [task], base_model_path=model if adapter else None,
                            sample_ratio=eval_sample_ratio(config, task), batch_size=config.eval_batch_size,
                            output_dir=out, dtype=config.dtype)
    entry = result["tasks"][task]
    return {"metrics": entry["metrics"], "records": str(Path(entry["records"]).resolve()),
            "wall_time_s": entry.get("timing", {}).get("wall_s")}


# --- transfer ------------------------------------------------------------------------------------------


def transfer(config: StudyConfig, source: str, target: str, task: str, source_adapter: str, method: str,
             overrides: dict[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """Move the source LoRA with `method` (plus ablation `overrides`); reuse a finished identical transfer."""
    from paw.models import load_base
    from paw.transfer import transfer_adapter

    options: dict[str, Any] = {"method": "paw" if method == "paw+distill" else method,
                               "calibration_size": config.calibration_size,
                               "distill_steps": config.distill_steps if method == "paw+distill" else 0,
                               "distill_lr": config.distill_lr} | (overrides or {})
    spec = {"source_adapter": source_adapter, "source": source, "target": target, "task": task,
            "dtype": config.dtype, "code": _transfer_code_key(), **options}
    out = config.study_dir / "transfer" / f"{source}__{target}" / task / f"{label or method}-{_key(spec)}"
    report_path = out / "transfer_report.json"
    if not report_path.exists():
        transfer_adapter(source_adapter, source_model=load_base(source, dtype=config.dtype),
                         target_model=load_base(target, dtype=config.dtype), output_dir=out,
                         calibration_tasks=[task], **options)
    report = json.loads(report_path.read_text())
    return {"adapter": str(out), "wall_time_s": report["wall_time_s"],
            "shift_agreement": (report.get("shift_agreement") or {}).get("cosine"),
            "scale": (report.get("scale_fit") or {}).get("scale")}


# --- the study -----------------------------------------------------------------------------------------


def run_models(config: StudyConfig, state: dict[str, Any], task: str) -> None:
    """Train and evaluate each model's LoRA on the task, and each base."""
    for model in config.models:
        key = f"{model}/{task}"
        _log(f"train + eval {key}")
        trained = train(config, model, task)
        state["models"][key] = {
            "train": trained,
            "base": evaluate(config, model, task, None, "base"),
            "lora": evaluate(config, model, task, trained["adapter"], "lora"),
        }
        _save_state(config, state)


def run_transfers(config: StudyConfig, state: dict[str, Any], task: str) -> None:
    """Every method in both directions on the task (and paw's ablations in the first direction)."""
    for source, target in ((config.models[0], config.models[1]), (config.models[1], config.models[0])):
        adapter = state["models"][f"{source}/{task}"]["train"]["adapter"]
        for method in config.methods:
            _run_one(config, state, source, target, task, adapter, method)
        if config.ablations and task in config.ablation_tasks and source == config.models[0]:
            for name, overrides in ABLATIONS.items():
                _run_one(config, state, source, target, task, adapter, "paw", overrides, f"paw[{name}]")


def _run_one(config: StudyConfig, state: dict[str, Any], source: str, target: str, task: str, adapter: str,
             method: str, overrides: dict[str, Any] | None = None, label: str | None = None) -> None:
    label = label or method
    key = f"{source}__{target}/{task}/{label}"
    _log(f"transfer + eval {key}")
    moved = transfer(config, source, target, task, adapter, method, overrides, label)
    moved["eval"] = evaluate(config, target, task, moved["adapter"], f"from-{source}-{label}")
    state["transfers"][key] = moved
    _save_state(config, state)


def _state_path(config: StudyConfig) -> Path:
    return config.study_dir / "study_state.json"


def _save_state(config: StudyConfig, state: dict[str, Any]) -> None:
    from paw.io import atomic_write_json

    atomic_write_json(_state_path(config), state)


def _load_state(config: StudyConfig) -> dict[str, Any]:
    path = _state_path(config)
    return json.loads(path.read_text()) if path.exists() else {"models": {}, "transfers": {}}


# --- the report ----------------------------------------------------------------------------------------


def direction_results(config: StudyConfig, state: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    """One direction in a pipeline experiment's `results.json` shape, so `paw.report` analyses it."""
    labels = [key.rsplit("/", 1)[1] for key in state["transfers"] if key.startswith(f"{source}__{target}/")]
    labels = list(dict.fromkeys(labels))
    evaluations: dict[str, dict[str, Any]] = {}
    for task in config.tasks:
        models = state["models"]
        if f"{source}/{task}" not in models or f"{target}/{task}" not in models:
            continue
        for label, entry in (("source_base", models[f"{source}/{task}"]["base"]),
                             ("source_lora", models[f"{source}/{task}"]["lora"]),
                             ("target_base", models[f"{target}/{task}"]["base"]),
                             ("target_lora", models[f"{target}/{task}"]["lora"])):
            evaluations.setdefault(label, {})[task] = {"records": entry["records"], "metrics": entry["metrics"]}
        for label in labels:
            moved = state["transfers"].get(f"{source}__{target}/{task}/{label}")
            if moved:
                evaluations.setdefault(f"transferred/{label}", {})[task] = {"records": moved["eval"]["records"]}
    steps = [{"number": 2 if model == source else 6, "title": f"train {model} LoRA on {task}", "status": "ran",
              "wall_s": state["models"][f"{model}/{task}"]["train"]["wall_time_s"] or 0.0,
              "peak_rss_mb": state["models"][f"{model}/{task}"]["train"].get("peak_memory_mb") or 0.0}
             for model in (source, target) for task in config.tasks if f"{model}/{task}" in state["models"]]
    return {"experiment": f"transfer study {source} -> {target}", "source_model": source, "target_model": target,
            "tasks": [t for t in config.tasks if t in evaluations.get("target_base", {})], "methods": labels,
            "metric": "acc", "split": None, "sample_ratio": "see eval_items", "evaluations": evaluations,
            "steps": steps}


def _is_ablation(label: str) -> bool:
    return "[" in label


def summarize_direction(config: StudyConfig, state: dict[str, Any], source: str, target: str,
                        analysis: dict[str, Any]) -> dict[str, Any]:
    """Per method: mean R over counted tasks, tasks where paw's R interval lies above the method's, costs."""
    methods = list(dict.fromkeys(m for entry in analysis.values() for m in entry["methods"]))
    counted = [task for task, entry in analysis.items()
               if entry["trained_gain"] and entry["trained_gain"]["value"] >= MIN_GAIN_POINTS]
    per_method: dict[str, Any] = {}
    for method in methods:
        recoveries = {task: analysis[task]["methods"][method]["recovery"] for task in counted
                      if method in analysis[task]["methods"]}
        costs = [state["transfers"][f"{source}__{target}/{task}/{method}"]["wall_time_s"] for task in analysis
                 if f"{source}__{target}/{task}/{method}" in state["transfers"]]
        train_costs = [state["models"][f"{target}/{task}"]["train"]["wall_time_s"] for task in analysis
                       if f"{source}__{target}/{task}/{method}" in state["transfers"]]
        per_method[method] = {
            "mean_recovery": (sum(r["value"] for r in recoveries.values()) / len(recoveries)) if recoveries else None,
            "tasks_counted": len(recoveries),
            "transfer_wall_s": sum(costs),
            "target_train_wall_s": sum(t or 0.0 for t in train_costs),
        }
        per_method[method]["cost_ratio"] = (per_method[method]["transfer_wall_s"] / per_method[method]["target_train_wall_s"]
                                            if per_method[method]["target_train_wall_s"] else None)
    baselines = [m for m in methods if m not in ("paw", "paw+distill") and not _is_ablation(m)]
    if "paw" in per_method:
        above = []
        for task in counted:
            paw_rec = analysis[task]["methods"].get("paw", {}).get("recovery")
            others = [analysis[task]["methods"][m]["recovery"] for m in baselines if m in analysis[task]["methods"]]
            if paw_rec and others and all(paw_rec["low"] > other["high"] for other in others):
                above.append(task)
        per_method["paw"]["tasks_above_every_baseline"] = above
    # A transfer that moved the source's skill unchanged (retention 1) would gain what the source LoRA gained:
    # R = source gain / trained gain, the reference a faithful transfer reaches, not a bound on a better one.
    full_retention = {task: analysis[task]["source_gain"]["value"] / analysis[task]["trained_gain"]["value"]
                      for task in counted if analysis[task]["source_gain"]}
    return {"source": source, "target": target, "counted_tasks": counted,
            "recovery_at_full_retention": {
                "per_task": full_retention,
                "mean": sum(full_retention.values()) / len(full_retention) if full_retention else None},
            "not_counted": {task: entry["trained_gain"]["value"] if entry["trained_gain"] else None
                            for task, entry in analysis.items() if task not in counted},
            "methods": per_method}



def recovery_figure(directions: list[tuple[dict[str, Any], dict[str, Any]]], path: Path) -> None:
    """R per task and method (95% intervals), one panel per direction; main methods only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(directions), figsize=(7 * len(directions), 4.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (summary, analysis) in zip(axes[0], directions):
        methods = [m for m in summary["methods"] if not _is_ablation(m)]
        tasks = list(analysis)
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            xs, ys, errs = [], [], [[], []]
            for t, task in enumerate(tasks):
                rec = analysis[task]["methods"].get(method, {}).get("recovery")
                if rec and rec["judged"]:
                    xs.append(t + (i - (len(methods) - 1) / 2) * width)
                    ys.append(rec["value"])
                    errs[0].append(max(rec["value"] - rec["low"], 0.0))
                    errs[1].append(max(rec["high"] - rec["value"], 0.0))
            ax.bar(xs, ys, width, yerr=errs, capsize=2, label=method, color=colors(i))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(1, color="gray", linewidth=0.8, linestyle="--")
        labels = [task if task in summary["counted_tasks"] else f"{task}\n(not counted)" for task in tasks]
        ax.set_xticks(range(len(tasks)), labels, fontsize=8)
        ax.set_ylabel("recovery R (95% paired bootstrap)")
        ax.set_title(f"{summary['source']} → {summary['target']}")
        ax.set_ylim(-1.5, 1.5)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _recovery_cell(recovery: dict[str, Any] | None, gain: dict[str, Any] | None = None) -> str:
    """R with its interval where judged; else the gain in points (when given) or a dash."""
    if recovery and recovery["judged"]:
        return f"{recovery['value']:.2f} [{recovery['low']:.2f}, {recovery['high']:.2f}]"
    return f"gain {gain['value']:+.1f}" if gain else "—"


def study_markdown(config: StudyConfig, directions: list[tuple[dict[str, Any], dict[str, Any]]],
                   state: dict[str, Any]) -> str:
    lines = ["# Transfer study: results", "",
             f"Generated by `python benchmarks/transfer_study.py` ({config.eval_items or 'all'} evaluation items per "
             f"task, LoRA preset `{config.preset}`, {config.train_steps} steps × batch {config.train_batch_size}, "
             f"lr {config.lr:g}, dtype {config.dtype}; paw with {config.calibration_size} calibration prompts; "
             f"paw+distill adds {config.distill_steps} distillation steps at lr {config.distill_lr:g}).", "",
             "R = (transferred − target base) / (target-trained − target base), acc on the same questions, 95% paired "
             f"bootstrap interval. Tasks where the target-trained LoRA gains < {MIN_GAIN_POINTS:.0f} points are not "
             "counted (R would be noise); their cells show the transferred gain in points instead. R at retention 1 = "
             "source gain / trained gain: the R of a transfer that moves the source LoRA's gain unchanged. Cost "
             "ratio = transfer wall time / target LoRA training wall time, summed over the tasks.", ""]
    for summary, analysis in directions:
        lines += [f"## {summary['source']} → {summary['target']}", ""]
        if summary["not_counted"]:
            lines.append("Not counted (target-trained gain in points): " + ", ".join(
                f"{task} ({gain:+.1f})" if gain is not None else task for task, gain in summary["not_counted"].items()))
            lines.append("")
        methods = [m for m in summary["methods"] if not _is_ablation(m)]
        ablations = [m for m in summary["methods"] if _is_ablation(m)]
        if methods:
            full_retention = summary["recovery_at_full_retention"]
            lines += ["| task | trained gain | source gain | R at retention 1 | " + " | ".join(methods) + " |",
                      "|---|---:|---:|---:|" + "---:|" * len(methods)]
            for task, entry in analysis.items():
                cells = [_recovery_cell(entry["methods"].get(method, {}).get("recovery"), entry["methods"].get(method, {}).get("gain"))
                         for method in methods]
                reference = full_retention["per_task"].get(task)
                lines.append(f"| {task} | {entry['trained_gain']['value']:+.1f} | {entry['source_gain']['value']:+.1f} | "
                             f"{'—' if reference is None else f'{reference:.2f}'} | " + " | ".join(cells) + " |")
            mean_reference = full_retention["mean"]
            lines.append(f"| **mean R (counted)** | | | {'—' if mean_reference is None else f'{mean_reference:.2f}'} | "
                         + " | ".join(
                "—" if summary["methods"][m]["mean_recovery"] is None else f"**{summary['methods'][m]['mean_recovery']:.2f}**"
                for m in methods) + " |")
            lines.append("| cost ratio | | | | " + " | ".join(
                "—" if summary["methods"][m]["cost_ratio"] is None else f"{summary['methods'][m]['cost_ratio']:.2f}"
                for m in methods) + " |")
        above = summary["methods"].get("paw", {}).get("tasks_above_every_baseline")
        if above is not None:
            lines += ["", f"paw's R interval lies above every training-free baseline's on {len(above)} counted "
                          f"task(s){': ' + ', '.join(above) if above else ''}."]
        if ablations:
            lines += ["", "Ablations of paw (R; the paw column above is the reference setting):", "",
                      "| variant | " + " | ".join(t for t in analysis if any(a in analysis[t]["methods"] for a in ablations)) + " |"]
            ablation_tasks = [t for t in analysis if any(a in analysis[t]["methods"] for a in ablations)]
            lines.append("|---|" + "---:|" * len(ablation_tasks))
            for variant in ["paw", *ablations]:
                lines.append(f"| {variant} | " + " | ".join(
                    _recovery_cell(analysis[t]["methods"].get(variant, {}).get("recovery"), gain=analysis[t]["methods"].get(variant, {}).get("gain"))
                    for t in ablation_tasks) + " |")
        methods = [*methods, *ablations]
        lines += ["", "Accuracy (%):", "",
                  "| task | " + " | ".join(["source base", "source LoRA", "target base", "target LoRA", *methods]) + " |",
                  "|---|" + "---:|" * (4 + len(methods))]
        for task, entry in analysis.items():
            acc = entry["accuracy"]
            cells = [acc.get(label) for label in ("source_base", "source_lora", "target_base", "target_lora")]
            cells += [acc.get(f"transferred/{m}") for m in methods]
            lines.append(f"| {task} | " + " | ".join("—" if c is None else f"{c['value']:.1f}" for c in cells) + " |")
        lines.append("")
    lines += ["## Costs", "", "| model | task | train wall (s) | train tokens | eval items |", "|---|---|---:|---:|---:|"]
    for key, entry in state["models"].items():
        model, task = key.split("/")
        lines.append(f"| {model} | {task} | {entry['train']['wall_time_s'] or 0:.0f} | {entry['train']['tokens'] or 0} | "
                     f"{entry['lora']['metrics']['n']} |")
    return "\n".join(lines) + "\n"


def write_study_report(config: StudyConfig, state: dict[str, Any]) -> None:
    """Per direction: a pipeline-style experiment folder (results.json, summary.md/png, results.csv) under the
    study folder; for the study: transfer_study.{json,md,csv} and transfer_recovery.png in `results_dir`."""
    from paw.io import atomic_write_json, atomic_write_text
    from paw.report import write_reports

    directions = []
    csv_lines = ["direction,task,method,counted,recovery,recovery_low,recovery_high,gain,gain_low,gain_high,retention"]
    for source, target in ((config.models[0], config.models[1]), (config.models[1], config.models[0])):
        results = direction_results(config, state, source, target)
        if not results["tasks"]:
            continue
        folder = config.study_dir / f"{source}__{target}"
        atomic_write_json(folder / "results.json", results)
        analysis = write_reports(folder)
        summary = summarize_direction(config, state, source, target, analysis)
        directions.append((summary, analysis))
        for task, entry in analysis.items():
            for method, row in entry["methods"].items():
                rec = row.get("recovery") or {}
                judged = bool(rec.get("judged"))
                csv_lines.append(",".join(str(v) for v in (
                    f"{source}->{target}", task, method, judged,
                    *(round(rec[k], 4) if judged else "" for k in ("value", "low", "high")),
                    *(round(row["gain"][k], 2) for k in ("value", "low", "high")),
                    "" if row.get("retention") is None else round(row["retention"], 3))))
    config.results_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()}
    atomic_write_json(config.results_dir / "transfer_study.json",
                      {"config": settings, "directions": [{"summary": s, "analysis": a} for s, a in directions]})
    atomic_write_text(config.results_dir / "transfer_study.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(config.results_dir / "transfer_study.md", study_markdown(config, directions, state))
    recovery_figure(directions, config.results_dir / "transfer_recovery.png")
    for summary, _ in directions:
        folder = config.study_dir / f"{summary['source']}__{summary['target']}"
        atomic_write_text(config.results_dir / f"{summary['source']}__{summary['target']}.md",
                          (folder / "summary.md").read_text())
    _log(f"report: {config.results_dir / 'transfer_study.md'}")


def parse_args(argv: list[str] | None = None) -> tuple[StudyConfig, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("all", "models", "transfers", "report"), default="all")
    parser.add_argument("--study_dir", type=Path, default=Path("runs/transfer_study"))
    parser.add_argument("--results_dir", type=Path, default=Path("docs/results"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--models", nargs=2, default=list(MODELS), help="The two bases; both directions run.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--eval_items", type=int, default=500,
                        help="Evaluation items per task: a fixed random sample, the same for every model (0: all).")
    parser.add_argument("--train_steps", type=int, default=120)
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--model_lr", nargs="*", default=[], metavar="MODEL=LR",
                        help="Per-model learning rates overriding --lr, e.g. gemma3-270m=6e-4.")
    parser.add_argument("--preset", default="full", help="LoRA preset of the trained adapters.")
    parser.add_argument("--train_precision", default="bf16-true",
                        help="Lightning precision of the LoRA trainings (bf16-mixed keeps fp32 LoRA weights; on "
                             "gemma3 ARC-Easy it gained the same as bf16-true: +2.2 vs +2.4 points).")
    parser.add_argument("--calibration_size", type=int, default=128)
    parser.add_argument("--distill_steps", type=int, default=64)
    parser.add_argument("--distill_lr", type=float, default=1e-3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--ablations", action="store_true", help="Also run paw's ablations.")
    parser.add_argument("--ablation_tasks", nargs="+", default=["arc-easy"])
    args = parser.parse_args(argv)
    from paw.tasks import canonical_task_name

    stage = args.stage
    values = vars(args)
    del values["stage"]
    try:
        values["model_lr"] = {name: float(lr) for name, lr in (pair.split("=", 1) for pair in values["model_lr"])}
    except ValueError:
        parser.error(f"--model_lr takes MODEL=LR pairs, e.g. gemma3-270m=6e-4; got {values['model_lr']}")
    values["study_dir"] = values["study_dir"].resolve()  # the state file records absolute paths
    values["tasks"] = [canonical_task_name(t) for t in values["tasks"]]
    values["ablation_tasks"] = [canonical_task_name(t) for t in values["ablation_tasks"]]
    return StudyConfig(**values), stage


def main(argv: list[str] | None = None) -> int:
    config, stage = parse_args(argv)
    config.study_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(config)
    try:
        for task in config.tasks:  # task by task, so each finished task is a complete part of the study
            if stage in ("all", "models"):
                run_models(config, state, task)
            if stage in ("all", "transfers"):
                run_transfers(config, state, task)
        if stage in ("all", "report"):
            write_study_report(config, state)
    except PawError as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
