"""Task registry names and errors, and deterministic, nested sampling."""

from __future__ import annotations

import random

import pytest

import paw.tasks
from paw.errors import PawError
from paw.tasks import (
    MCItem,
    canonical_split,
    canonical_task_name,
    get_task,
    load_items,
    sample_items,
    task_names,
    training_pairs,
)

TASKS = ["arc-challenge", "arc-easy", "piqa", "hellaswag", "winogrande", "openbookqa", "boolq"]


def test_task_names() -> None:
    assert task_names() == TASKS


@pytest.mark.parametrize("name", ["arc_challenge", "arc-challenge", "ARC-Challenge", "ARC_Challenge", " arc-c "])
def test_arc_challenge_spellings(name: str) -> None:
    assert canonical_task_name(name) == "arc-challenge"
    assert get_task(name).name == "arc-challenge"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("ARC_Easy", "arc-easy"), ("OBQA", "openbookqa"), ("OpenBookQA", "openbookqa"), ("winogrande_xl", "winogrande"),
     ("HellaSwag", "hellaswag"), ("PIQA", "piqa"), ("super_glue/boolq", "boolq")],
)
def test_other_spellings(name: str, canonical: str) -> None:
    assert canonical_task_name(name) == canonical


def test_unknown_task_is_one_line_listing_valid_tasks() -> None:
    with pytest.raises(PawError) as excinfo:
        load_items("mmlu")
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("unknown task 'mmlu'; valid tasks: " + ", ".join(TASKS))


def test_splits_and_unknown_split() -> None:
    assert [canonical_split(s) for s in ("train", "VAL", "dev", "validation", "test")] == [
        "train", "validation", "validation", "validation", "test"
    ]
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", "holdout")
    message = str(excinfo.value)
    assert "\n" not in message and "unknown split 'holdout'; valid splits: train, validation, test" in message


def test_task_specs() -> None:
    defaults = {name: get_task(name).default_eval_split for name in TASKS}
    assert defaults == {
        "arc-challenge": "test", "arc-easy": "test", "piqa": "validation", "hellaswag": "validation",
        "winogrande": "validation", "openbookqa": "test", "boolq": "validation",
    }
    assert get_task("arc-challenge").embedded_splits == ("train", "validation", "test")
    assert get_task("winogrande").embedded_splits == ("train", "validation")
    assert get_task("arc-c").aliases == ("arc-c",)


def test_public_api() -> None:
    assert {"task_names", "get_task", "canonical_task_name", "load_items", "available_splits", "sample_items",
            "MCItem", "training_pairs", "TaskSpec"} <= set(paw.tasks.__all__)


# --- sample_items ------------------------------------------------------------------------------------------------


def make_items(n: int) -> list[MCItem]:
    return [MCItem(f"q{i}", "piqa", ("c", "c"), (" a", " b"), ("a", "b"), i % 2) for i in range(n)]


def test_sample_is_deterministic_and_in_input_order() -> None:
    items = load_items("arc-challenge")
    first = sample_items(items, 0.1)
    assert first == sample_items(load_items("arc-challenge"), 0.1)
    assert len(first) == 117  # round(0.1 * 1172)
    positions = [items.index(item) for item in first]
    assert positions == sorted(positions)
    assert sample_items(items, 0.1, seed=7) != first


def test_sample_depends_only_on_ids_not_on_order() -> None:
    # "Same items for every model": whatever order a caller holds the items in, the same ids are picked.
    items = make_items(500)
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert {i.id for i in sample_items(items, 0.2)} == {i.id for i in sample_items(shuffled, 0.2)}


def test_sample_is_nested() -> None:
    items = make_items(1000)
    ids = [{item.id for item in sample_items(items, ratio)} for ratio in (0.05, 0.1, 0.3, 0.7, 1.0)]
    assert [len(s) for s in ids] == [50, 100, 300, 700, 1000]
    assert all(small < large for small, large in zip(ids, ids[1:]))


def test_ratio_one_keeps_everything() -> None:
    items = make_items(3)
    assert sample_items(items, 1.0) == items


def test_empty_sample_and_bad_ratio_are_errors() -> None:
    with pytest.raises(PawError, match="selects none"):
        sample_items(make_items(3), 0.1)
    with pytest.raises(PawError, match="selects none"):
        sample_items([], 0.5)
    for ratio in (0.0, -0.5, 1.5):
        with pytest.raises(PawError, match="out of range"):
            sample_items(make_items(3), ratio)


def test_training_pairs_are_gold_context_and_continuation() -> None:
    items = make_items(2)
    assert training_pairs(items) == [("c", " a"), ("c", " b")]
