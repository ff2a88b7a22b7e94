"""Per-task row formatting, string for string as lm-evaluation-harness 0.4.x builds zero-shot requests.

Each `*_prompt` function maps one source row in its Hugging Face schema (the dataset lm-eval's task YAML names)
to a `Prompt`. The other functions rebuild those rows from the two other shapes PAW reads: oe-eval request
docs (the embedded train/test splits) and users' `*_formatted.jsonl` rows (input, options, gold index).
Sources: lm_eval/tasks/{arc,openbookqa,piqa,hellaswag,winogrande,super_glue/boolq}/ in lm_eval 0.4.x.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

# lm-eval's default `target_delimiter`: each answer is scored as " " + choice after the context.
TARGET_DELIMITER = " "

Row = Mapping[str, Any]


class Prompt(NamedTuple):
    """The scoring strings of one item (see MCItem): one context and one continuation per choice."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int


def shared_context_prompt(context: str, choices: list[str], gold: int) -> Prompt:
    """lm-eval's usual multiple choice: one context, every choice appended after the target delimiter."""
    return Prompt(
        (context,) * len(choices), tuple(TARGET_DELIMITER + choice for choice in choices), tuple(choices), gold
    )


def arc_prompt(row: Row) -> Prompt:
    choices = row["choices"]
    return shared_context_prompt(
        f"Question: {row['question']}\nAnswer:", list(choices["text"]), list(choices["label"]).index(row["answerKey"])
    )


def openbookqa_prompt(row: Row) -> Prompt:
    choices = row["choices"]
    gold = list(choices["label"]).index(row["answerKey"].lstrip())
    return shared_context_prompt(row["question_stem"], list(choices["text"]), gold)


def piqa_prompt(row: Row) -> Prompt:
    return shared_context_prompt(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"]))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: the brackets are artifacts of the WikiHow part of HellaSwag."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_prompt(row: Row) -> Prompt:
    # A row that already has `query` is lm-eval's processed doc (also what oe-eval stores); preprocess is not
    # idempotent on runs of spaces, so those strings are used as they are.
    if "query" in row:
        return shared_context_prompt(row["query"], list(row["choices"]), int(row["gold"]))
    query = hellaswag_preprocess(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return shared_context_prompt(query, [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def winogrande_prompt(row: Row) -> Prompt:
    """Partial scoring: each option fills the blank in the context; the rest of the sentence is shared."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    gold = {"1": 0, "2": 1}[str(row["answer"])]
    return Prompt(contexts, (continuation,) * 2, contexts, gold)


def boolq_prompt(row: Row) -> Prompt:
    # lm-eval reads super_glue/boolq (`label`, 1 = yes); google/boolq rows carry a bool `answer` instead.
    label = int(row["label"]) if "label" in row else int(bool(row["answer"]))
    return shared_context_prompt(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], label)


# --- oe-eval request docs -> HF rows -------------------------------------------------------------------------


def _question_from_query(query: str) -> str:
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"query does not look like 'Question: ...\\nAnswer:': {query[:60]!r}")
    return query[len(prefix) : -len(suffix)]


def _lettered_choices(texts: list[str], gold: int) -> tuple[dict[str, list[str]], str]:
    labels = list(string.ascii_uppercase[: len(texts)])
    return {"text": list(texts), "label": labels}, labels[gold]


def arc_row_from_doc(doc: Row) -> dict[str, Any]:
    # oe-eval keeps the texts and gold index but not the original labels (A-E or 1-4); letters keep the gold.
    choices, answer_key = _lettered_choices(doc["choices"], doc["gold"])
    question = _question_from_query(doc["query"])
    return {"id": doc["id"], "question": question, "choices": choices, "answerKey": answer_key}


def openbookqa_row_from_doc(doc: Row) -> dict[str, Any]:
    choices, answer_key = _lettered_choices(doc["choices"], doc["gold"])
    return {
        "id": doc["id"],
        "question_stem": _question_from_query(doc["query"]),
        "choices": choices,
        "answerKey": answer_key,
    }


def boolq_row_from_doc(doc: Row) -> dict[str, Any]:
    # oe-eval's query is lm-eval's "{passage}\nQuestion: {question}?\nAnswer:" over super_glue passages.
    head, sep, tail = doc["query"].rpartition("\nQuestion: ")
    if not sep or not tail.endswith("?\nAnswer:"):
        raise ValueError(f"query does not end with '\\nQuestion: ...?\\nAnswer:': {doc['query'][-60:]!r}")
    return {
        "idx": doc["idx"],
        "passage": head,
        "question": tail[: -len("?\nAnswer:")],
        "label": int(doc["choices"][doc["gold"]] == "yes"),
    }


def hellaswag_row_from_doc(doc: Row) -> dict[str, Any]:
    # oe-eval stores a processed doc (query/choices/gold), so ctx_a/ctx_b cannot be recovered. Its preprocess
    # differs from lm-eval's around WikiHow's "[title]" (". " where lm-eval leaves ".. "): on validation 31% of
    # items differ that way, so embedded HellaSwag *train* strings follow oe-eval; evaluation uses the Arrow split.
    return {"ind": doc["ind"], "query": doc["query"], "choices": list(doc["choices"]), "gold": doc["gold"]}


def copy_fields(*fields: str) -> Callable[[Row], dict[str, Any]]:
    """For docs that already carry the HF fields (PIQA, WinoGrande): keep just those."""

    def row_from_doc(doc: Row) -> dict[str, Any]:
        return {field: doc[field] for field in fields}

    return row_from_doc


# --- users' formatted rows (input, options without "A: ", gold index) -> HF rows ------------------------------


def arc_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    choices, answer_key = _lettered_choices(options, gold)
    return {"question": text, "choices": choices, "answerKey": answer_key}


def openbookqa_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    choices, answer_key = _lettered_choices(options, gold)
    return {"question_stem": text, "choices": choices, "answerKey": answer_key}


def piqa_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    sol1, sol2 = options
    return {"goal": text, "sol1": sol1, "sol2": sol2, "label": gold}


def hellaswag_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    # The context arrives joined, so lm-eval's preprocess is applied to it and the endings as process_docs would.
    return {"query": hellaswag_preprocess(text), "choices": [hellaswag_preprocess(o) for o in options], "gold": gold}


def winogrande_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    option1, option2 = options
    return {"sentence": text, "option1": option1, "option2": option2, "answer": str(gold + 1)}


def boolq_row_from_formatted(text: str, options: list[str], gold: int) -> dict[str, Any]:
    # Expected input: "{passage}\n{question}", the question optionally as "Question: ...?".
    passage, _, question = text.rpartition("\n")
    question = question.strip().removeprefix("Question:").strip().removesuffix("?")
    answer = options[gold].strip().lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"the gold option must be yes or no, got {options[gold]!r}")
    return {"passage": passage, "question": question, "label": int(answer == "yes")}
