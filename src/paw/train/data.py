"""Training examples tokenized exactly as the evaluator scores them, in a seeded order that a resumed run continues."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from paw.errors import PawError
from paw.evaluate.scoring import encode_requests
from paw.tasks.items import MCItem, training_pairs

IGNORE_INDEX = -100  # label of tokens that carry no loss: prompt and padding

log = logging.getLogger(__name__)


def training_example(tokenizer: Any, item: MCItem, max_length: int) -> dict[str, list[int]]:
    """The gold choice tokenized exactly as the evaluator scores it (lm-eval's pair split and left truncation):
    input_ids are context + answer, labels are -100 except on the answer tokens the evaluator scores. Longer than
    max_length + 1 tokens, the prompt loses its start, and an answer longer than max_length keeps its first tokens."""
    request = encode_requests(tokenizer, [item], max_length, truncate_answers=True, warn=False)[0][item.gold]
    input_ids = request.inputs + request.targets[-1:]
    labels = [IGNORE_INDEX] * (len(input_ids) - len(request.targets)) + request.targets
    return {"input_ids": input_ids, "labels": labels}


class GoldDataset(Dataset):
    """Training items as examples of their gold choice, tokenized when read (only the ones a run uses)."""

    def __init__(self, items: Sequence[MCItem], tokenizer: Any, max_length: int) -> None:
        self.items = items
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._warned = False

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = training_example(self.tokenizer, self.items[index], self.max_length)
        if len(example["input_ids"]) > self.max_length and not self._warned:  # once, not per example
            self._warned = True
            log.warning("training examples reach max_length %d tokens (first: %r of %s) and longer ones are "
                        "truncated; raise --max_length to train on them whole", self.max_length, self.items[index].id,
                        self.items[index].task)
        return example


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "num_tokens": int(attention_mask.sum())}


class PlannedBatches(Sampler[list[int]]):
    """The run's micro-batches for one rank, from `start_batch` on.

    The data order is a stream of seeded permutations of the examples (one per pass); global micro-batch b takes
    the next batch_size * world_size examples, and rank r takes its slice. A run resumed at micro-batch b
    therefore sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, num_examples: int, batch_size: int, num_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self._pass = -1
        self._order: list[int] = []

    def __len__(self) -> int:
        return max(self.num_batches - self.start_batch, 0)

    def _example(self, position: int) -> int:
        data_pass, offset = divmod(position, self.num_examples)
        if data_pass != self._pass:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + data_pass)
            self._order = torch.randperm(self.num_examples, generator=generator).tolist()
            self._pass = data_pass
        return self._order[offset]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in range(self.start_batch, self.num_batches):
            first = (batch * self.world_size + self.rank) * self.batch_size
            yield [self._example(position) for position in range(first, first + self.batch_size)]


def hold_out(items: Mapping[str, list[MCItem]], val_size: int,
             seed: int) -> tuple[dict[str, list[MCItem]], list[MCItem]]:
    """Split each task's train items into training items and a seeded validation slice of up to val_size items."""
    train, validation = {}, []
    for task, task_items in items.items():
        order = torch.randperm(len(task_items), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = min(val_size, len(task_items) // 2)
        validation += [task_items[i] for i in order[:n_val]]
        train[task] = [task_items[i] for i in sorted(order[n_val:])]
    return train, validation


def mixed_items(items: Mapping[str, list[MCItem]]) -> list[MCItem]:
    """All tasks' training items in one list; PlannedBatches shuffles them together."""
    mixed = [item for task_items in items.values() for item in task_items]
    if not mixed:
        raise PawError(f"no training items in {', '.join(items) or 'the given tasks'}; pick tasks with a train split")
    return mixed


def data_hash(items: Sequence[MCItem]) -> str:
    """Fingerprint of the exact training text ((prompt, answer) pairs), in order."""
    return hashlib.sha256(json.dumps(training_pairs(list(items)), ensure_ascii=False).encode()).hexdigest()[:16]
