"""The six-step transfer experiment, one recipe that reads top to bottom.

    1 eval source base · 2 train source LoRA (+ eval) · 3 transfer the LoRA to the target (per method) ·
    4 eval target base · 5 eval transferred LoRA (per method) · 6 train target LoRA (+ eval: the upper bound)

Every step writes into its own folder under `<experiment>/steps/`, atomically, and is recorded in `state.json`
with a fingerprint of its inputs; `continue` skips a step whose fingerprint still matches. Steps run in an order
that loads each base once: the source base serves 1–3, the target base 3–6, and the source is released before
the target-only steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paw.config import PawConfig, dump_config
from paw.errors import PawError
from paw.io import atomic_write_json, atomic_write_text
from paw.pipeline.experiment import StepState, fingerprint, resolve_experiment_dir, slug
from paw.resources import free_memory, measure

STEP_TITLES = {
    1: "eval source base",
    2: "train source LoRA",
    3: "transfer LoRA to target",
    4: "eval target base",
    5: "eval transferred LoRA",
    6: "train target LoRA",
}


@dataclass
class PlannedStep:
    """One unit of work: a step (or one method's share of steps 3/5), its inputs' fingerprint and its folder."""

    key: str
    number: int
    title: str
    fingerprint: str
    output: Path
    run: Callable[[Path], dict[str, Any]] = field(repr=False)
    uses: tuple[str, ...] = ()  # base models it loads, for releasing memory when no later step needs them


@dataclass
class ExperimentPlan:
    name: str
    folder: Path
    folder_action: str
    tasks: list[str]
    methods: list[str]
    steps: list[PlannedStep]


def _methods(config: PawConfig) -> list[str]:
    return list(dict.fromkeys(config.transfer.methods or [config.transfer.method]))


def _task_groups(config: PawConfig) -> list[list[str]]:
    from paw.tasks import canonical_task_name

    tasks = list(dict.fromkeys(canonical_task_name(t) for t in config.training.datasets))
    return [tasks] if config.training.mix_datasets else [[t] for t in tasks]


def plan_experiment(config: PawConfig, tasks: list[str], *, selected: set[int], skip_train_target: bool,
                    interactive: bool | None = None, create: bool = True) -> ExperimentPlan:
    """Decide the experiment folder and the steps to run, without running anything."""
    source, target = config.default_experiment.source_model, config.default_experiment.target_model
    methods = _methods(config)
    prefix = f"{slug(source)}__{slug(target)}__{'+'.join(tasks)}"
    action = config.experiment_management.existing_experiment_action
    folder, folder_action = resolve_experiment_dir(Path(config.paths.experiments_dir), prefix,
                                                   config.general.timestamp, action if create else "continue",
                                                   interactive)
    steps_dir = folder / "steps"
    ev = config.evaluation
    eval_inputs = {"dtype": config.default_experiment.dtype, "tasks": tasks, "split": ev.split, "sample_ratio": ev.sample_ratio, "limit": ev.limit,
                   "data": config.data.source, "data_dir": config.paths.data_dir}
    train_inputs = {"dtype": config.default_experiment.dtype, "tasks": tasks, "training": vars(config.training) | {"devices": None, "strategy": None,
                                                                          "num_nodes": None},
                    "lora": config.lora.resolved(), "data": config.data.source, "data_dir": config.paths.data_dir}
    supplied_adapter = config.default_experiment.source_adapter
    source_train_fp = fingerprint("train", source, train_inputs) if not supplied_adapter else fingerprint("adapter", supplied_adapter)

    def source_adapter() -> Path:
        if supplied_adapter:
            return Path(supplied_adapter)
        record = StepState(folder).steps.get("2_train_source_lora")
        adapter = Path(record["summary"]["adapter"]) if record else None
        if adapter is None or not adapter.exists():
            raise PawError(f"step 3 needs the source LoRA, but {folder} has no finished step 2; run step 2 first "
                           "(--steps 2,3) or name an existing adapter with default_experiment.source_adapter")
        return adapter

    def transferred_adapter(method: str) -> Path:
        adapter = steps_dir / f"3_transfer_{method}" / "adapter"
        if not adapter.exists():
            raise PawError(f"step 5 needs the {method} transfer, but {adapter} does not exist; run step 3 first")
        return adapter

    steps: list[PlannedStep] = []

    def add(key: str, number: int, fp: str, run: Callable[[Path], dict[str, Any]], uses: tuple[str, ...]) -> None:
        if number in selected and not (number == 6 and skip_train_target):
            steps.append(PlannedStep(key, number, STEP_TITLES[number], fp, steps_dir / key, run, uses))

    add("1_eval_source_base", 1, fingerprint("eval", source, None, eval_inputs),
        lambda out: _evaluate(config, source, None, tasks, out), (source,))
    if not supplied_adapter:
        add("2_train_source_lora", 2, fingerprint(source_train_fp, eval_inputs),
            lambda out: _train_and_evaluate(config, source, tasks, out), (source,))
    transfer_fps = {method: fingerprint("transfer", source_train_fp, target, method,
                                        vars(config.transfer) | {"method": None, "methods": None})
                    for method in methods}
    for method in methods:
        add(f"3_transfer_{method}", 3, transfer_fps[method],
            lambda out, m=method: _transfer(config, source_adapter(), source, target, m, tasks, out), (source, target))
    add("4_eval_target_base", 4, fingerprint("eval", target, None, eval_inputs),
        lambda out: _evaluate(config, target, None, tasks, out), (target,))
    for method in methods:
        add(f"5_eval_transferred_{method}", 5, fingerprint("eval", target, transfer_fps[method], eval_inputs),
            lambda out, m=method: _evaluate(config, target, transferred_adapter(m), tasks, out), (target,))
    add("6_train_target_lora", 6, fingerprint(fingerprint("train", target, train_inputs), eval_inputs),
        lambda out: _train_and_evaluate(config, target, tasks, out), (target,))
    return ExperimentPlan(folder.name, folder, folder_action, tasks, methods, steps)


def describe_plan(plans: list[ExperimentPlan], config: PawConfig) -> str:
    lines = [f"source model: {config.default_experiment.source_model}",
             f"target model: {config.default_experiment.target_model}"]
    for plan in plans:
        state = StepState(plan.folder)
        lines.append(f"experiment {plan.folder} ({'exists, ' + plan.folder_action if plan.folder_action != 'new' else 'new'})")
        lines.append(f"  tasks: {', '.join(plan.tasks)}; methods: {', '.join(plan.methods)}")
        for step in plan.steps:
            done = "done, will be reused" if state.finished(step.key, step.fingerprint, step.output) else "to run"
            lines.append(f"  step {step.number}  {step.title:<24} {step.key:<28} [{done}] -> {step.output}")
    return "\n".join(lines)


def run_plan(plan: ExperimentPlan, config: PawConfig) -> Path:
    """Run (or reuse) every planned step, then write results.json and the reports."""
    from paw.models import release
    from paw.report import write_reports
    from paw.tracking import Tracker

    folder = plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", dump_config(config))
    logger = _file_logger(folder / "logs" / "pipeline.log")
    state = StepState(folder)
    ran: set[str] = set()
    tracker = Tracker(config.tracking.project, plan.name, folder / "swanlog", config.tracking.swanlab_mode,
                      config.to_dict())
    try:
        for index, step in enumerate(plan.steps):
            record = state.finished(step.key, step.fingerprint, step.output)
            if record:
                logger.info("step %d %s: done earlier (%s), reused", step.number, step.title, step.key)
                continue
            logger.info("step %d %s: running (%s)", step.number, step.title, step.key)
            with measure() as usage:
                summary = step.run(step.output)
            state.record(step.key, step.fingerprint, {"summary": summary, "usage": usage.as_dict()})
            ran.add(step.key)
            logger.info("step %d %s: finished in %.1f s, peak RAM %.0f MB", step.number, step.title,
                        usage.wall_s, usage.peak_rss_mb)
            tracker.log({f"{step.key}/{k}": v for k, v in _flat_metrics(summary).items()}
                        | {f"{step.key}/wall_s": usage.wall_s, f"{step.key}/peak_rss_mb": usage.peak_rss_mb})
            # Release bases that no later step uses (the source after step 3), so peaks don't add up.
            later = {name for s in plan.steps[index + 1:] for name in s.uses}
            for name in set(step.uses) - later:
                release(name, models_dir=config.paths.models_dir)
            free_memory()
        results = _results(plan, config, state, ran)
        atomic_write_json(folder / "results.json", results)
        project_csv = Path(config.paths.results_dir) / config.results.csv_file
        write_reports(folder, project_csv=project_csv)
        logger.info("reports: %s, %s, %s", folder / "summary.md", folder / "summary.png", folder / "results.csv")
    finally:
        tracker.finish()
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
    return folder


def run_pipeline(config: PawConfig, *, steps: set[int] | None = None, skip_train_target: bool = False,
                 dry_run: bool = False, interactive: bool | None = None) -> list[Path]:
    """Run the experiment for every task group in the config; return the experiment folders."""
    selected = steps or set(STEP_TITLES)
    plans = [plan_experiment(config, tasks, selected=selected, skip_train_target=skip_train_target,
                             interactive=interactive, create=not dry_run)
             for tasks in _task_groups(config)]
    if dry_run:
        print(describe_plan(plans, config))
        return [plan.folder for plan in plans]
    return [run_plan(plan, config) for plan in plans]


def _base(config: PawConfig, name: str) -> Any:
    """The shared, cached base: every step loads it the same way, so it is loaded once per run."""
    from paw.models import load_base

    return load_base(name, models_dir=config.paths.models_dir, dtype=config.default_experiment.dtype)


# --- the steps -------------------------------------------------------------------------------------------


def _evaluate(config: PawConfig, model: str, adapter: Path | None, tasks: list[str], out: Path) -> dict[str, Any]:
    from paw.evaluate import evaluate_model

    ev = config.evaluation
    result = evaluate_model(
        str(adapter) if adapter else model, tasks, base_model_path=model if adapter else None,
        sample_ratio=ev.sample_ratio, batch_size=ev.default_batch_size, split=ev.split, limit=ev.limit,
        output_dir=out, data_source=config.data.source, data_dir=config.paths.data_dir,
        models_dir=config.paths.models_dir, devices=config.training.devices,
        strategy=config.training.strategy, dtype=config.default_experiment.dtype)
    experiment_dir = next(p.parent for p in out.parents if p.name == "steps")
    return {"tasks": {task: {"metrics": entry["metrics"],
                             "records": str(Path(entry["records"]).resolve().relative_to(experiment_dir.resolve()))}
                      for task, entry in result["tasks"].items()}}


def _train_and_evaluate(config: PawConfig, model: str, tasks: list[str], out: Path) -> dict[str, Any]:
    from paw.train import TrainConfig, train_lora

    tr, lora = config.training, config.lora.resolved()
    result = train_lora(TrainConfig(
        model=model, datasets=tasks, batch_size=tr.default_batch_size, grad_accum=tr.gradient_accumulation_steps,
        max_steps=tr.default_max_steps, lr=tr.default_lr, warmup_ratio=tr.warmup_ratio, weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm, r=lora["r"], lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"], target_modules=lora["target_modules"], seed=tr.seed,
        precision=tr.precision, max_length=tr.max_length, devices=tr.devices, strategy=tr.strategy,
        num_nodes=tr.num_nodes, val_every_n_steps=tr.val_every_n_steps, output_dir=str(out / "runs"),
        swanlab_mode="disabled", data_source=config.data.source, data_dir=config.paths.data_dir,
        models_dir=config.paths.models_dir), model=_base(config, model))
    summary = _evaluate(config, model, Path(result.adapter_dir), tasks, out / "eval")
    train = {"steps": result.steps, "final_loss": result.final_loss, "reused": result.reused,
             **{k: result.info.get(k) for k in ("wall_time_s", "tokens_per_s", "tokens", "peak_memory_mb")}}
    return {"adapter": str(result.adapter_dir), "train": train, **summary}


def _transfer(config: PawConfig, source_adapter: Path, source: str, target: str, method: str, tasks: list[str],
              out: Path) -> dict[str, Any]:
    from paw.transfer import transfer_adapter

    tc = config.transfer
    result = transfer_adapter(
        source_adapter, source_model=_base(config, source), target_model=_base(config, target), method=method,
        output_dir=out / "adapter",
        rank=tc.rank, similarity_threshold=tc.similarity_threshold, calibration_tasks=tasks,
        calibration_size=tc.calibration_size, distill_steps=tc.distill_steps,
        distill_objective=tc.distill_objective, models_dir=config.paths.models_dir,
        data_source=config.data.source, data_dir=config.paths.data_dir)
    return {"transfer": result.summary()}


# --- results ----------------------------------------------------------------------------------------------

# Which evaluation each step's records are, in the report's words.
def _evaluation_label(key: str) -> str:
    if key.startswith("5_eval_transferred_"):
        return "transferred/" + key.removeprefix("5_eval_transferred_")
    return {"1_eval_source_base": "source_base", "2_train_source_lora": "source_lora",
            "4_eval_target_base": "target_base", "6_train_target_lora": "target_lora"}.get(key, "")


def _results(plan: ExperimentPlan, config: PawConfig, state: StepState, ran: set[str]) -> dict[str, Any]:
    evaluations: dict[str, dict[str, Any]] = {}
    steps = []
    for key, record in sorted(state.steps.items()):
        number = int(key.split("_", 1)[0])
        summary, usage = record.get("summary", {}), record.get("usage", {})
        method = key.split("_")[-1] if number in (3, 5) else None
        title = STEP_TITLES[number] + (f" ({method})" if method else "")
        steps.append({"key": key, "number": number, "title": title,
                      "status": "ran" if key in ran else "reused", **usage})
        label = _evaluation_label(key)
        if label and "tasks" in summary:
            evaluations[label] = summary["tasks"]
    return {
        "experiment": plan.name, "source_model": config.default_experiment.source_model,
        "target_model": config.default_experiment.target_model, "tasks": plan.tasks, "methods": plan.methods,
        "metric": "acc", "split": config.evaluation.split, "sample_ratio": config.evaluation.sample_ratio,
        "evaluations": evaluations, "steps": steps,
        "costs": {key: record["summary"].get(kind) for key, record in state.steps.items()
                  for kind in ("train", "transfer") if record.get("summary", {}).get(kind)},
    }


def _flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {f"{task}/{name}": value for task, entry in summary.get("tasks", {}).items()
            for name, value in entry.get("metrics", {}).items() if isinstance(value, (int, float))}


def _file_logger(path: Path) -> logging.Logger:
    """Pipeline messages go to the terminal and to `logs/pipeline.log` in the experiment folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("paw.pipeline")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        console = logging.StreamHandler()
        console.setFormatter(formatter)
        logger.addHandler(console)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(formatter)
    logger.addHandler(file_handler)
    return logger
