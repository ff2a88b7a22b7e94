"""Log-likelihood multiple-choice scoring, numerically the same as lm-evaluation-harness 0.4.x `HFLM`.

Tokenisation follows lm-eval exactly (`_encode_pair`, empty-context prefix token, tokenizer-default special tokens,
left truncation at the model's max length). The forward pass is where PAW differs, for speed:

* one row per item: the tokens every choice shares (the context, or for WinoGrande the text before the option) run
  once, and each choice's remaining tokens follow as a branch that attends to the shared part and to itself only
  (a 4D mask and explicit position ids make this the same computation as separate sequences);
* the vocabulary projection runs only at scored positions (`logits_to_keep` with a boolean mask, so the model's own
  final-logit soft-capping or scaling still applies, PEFT-wrapped or not);
* rows are sorted by length into low-padding batches; `batch_size="auto"` halves on out-of-memory.

`score_items_reference` is the naive one-forward-per-(context, choice) full-logits version the tests compare with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from paw.errors import PawError
from paw.progress import Progress
from paw.tasks.items import MCItem

log = logging.getLogger(__name__)

# lm-eval's fallbacks when neither the config nor the tokenizer states a context length.
DEFAULT_MAX_LENGTH = 2048
TOKENIZER_INFINITY = 1000000000000000019884624838656
AUTO_BATCH_START = {"cuda": 64, "cpu": 16}


@dataclass
class ItemRecord:
    """The scores of one item, saved one per JSONL line so runs can be compared item by item."""

    id: str
    task: str
    loglikelihoods: list[float]
    num_tokens: list[int]  # continuation tokens scored per choice
    prediction: int  # argmax of loglikelihoods (lm-eval `acc`)
    prediction_norm: int  # argmax of loglikelihood / len(choice) in characters (lm-eval `acc_norm`)
    gold: int
    is_greedy: list[bool] | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.prediction_norm == self.gold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"acc": float(self.correct), "acc_norm": float(self.correct_norm)}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ItemRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__ if name in row})


@dataclass
class ChoiceRequest:
    """One (context, continuation) pair as lm-eval feeds it to the model: `inputs` (context + continuation, minus
    the last token, left-truncated) and `targets`, the continuation tokens predicted at the last len(targets)
    positions."""

    inputs: list[int]
    targets: list[int]


@dataclass
class PackedItem:
    """All choices of one item in one row: shared tokens (branch 0), then one branch per choice (branch k+1)."""

    index: int  # position in the caller's item list
    tokens: list[int]
    positions: list[int]
    branches: list[int]
    scored_rows: list[list[int]]  # per choice: row indices whose next-token distribution scores each target
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.tokens)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation, as lm-eval 0.4.x HFLM does it


def model_max_length(model: Any, tokenizer: Any) -> int:
    """lm-eval's `resolve_max_length`: config (text_config first), then the tokenizer, then 2048."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer: Any) -> int:
    """The token lm-eval conditions on when the context is empty: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


class _Encoder:
    """lm-eval's `tok_encode`, memoised: the same context string is encoded once for all its choices.

    With `add_special_tokens` left at None the tokenizer's own default applies (so gemma tokenizers add BOS),
    except that a string already starting with the BOS text gets no second one.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix_id = prefix_token_id(tokenizer)
        self.prefix_text = tokenizer.decode(self.prefix_id) if self.prefix_id is not None else None
        self.cache: dict[tuple[str, bool | None], list[int]] = {}

    def prefetch(self, strings: set[tuple[str, bool | None]]) -> None:
        """Encode many strings in one batched tokenizer call per special-token setting."""
        for flag in (None, False):
            todo = sorted(s for s, f in strings if f is flag and (s, f) not in self.cache)
            if not todo:
                continue
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            for string, ids in zip(todo, self.tokenizer(todo, **kwargs)["input_ids"], strict=True):
                self.cache[(string, flag)] = list(ids)

    def key(self, string: str, add_special_tokens: bool | None = None) -> tuple[str, bool | None]:
        if add_special_tokens is None and self.prefix_text and string.startswith(self.prefix_text):
            add_special_tokens = False
        return string, add_special_tokens

    def __call__(self, string: str, add_special_tokens: bool | None = None) -> list[int]:
        key = self.key(string, add_special_tokens)
        if key not in self.cache:
            self.prefetch({key})
        return self.cache[key]


def _pair_strings(context: str, continuation: str) -> list[tuple[str, bool | None]]:
    """The strings `_encode_pair` will encode, for batched prefetching."""
    if context == "":
        return [(continuation, False)]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    return [(context + continuation, None), (context, None)]


def _encode_pair(encode: _Encoder, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval `LM.loglikelihood` + `_encode_pair`: trailing context spaces move to the continuation; the
    continuation is what encoding the whole adds beyond the context; an empty context becomes the prefix token."""
    if context == "":
        cont = encode(continuation, add_special_tokens=False)
        if not cont:
            raise PawError(f"continuation {continuation!r} encodes to no tokens; every choice needs text to score")
        return ([encode.prefix_id], cont) if encode.prefix_id != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = encode(context + continuation)
    context_enc = encode(context)
    return context_enc, whole[len(context_enc) :]


def encode_requests(tokenizer: Any, items: Sequence[MCItem], max_length: int, *, truncate_answers: bool = False,
                    warn: bool = True) -> list[list[ChoiceRequest]]:
    """Per item, per choice: the model inputs and scored targets lm-eval's `_loglikelihood_tokens` would use.

    A continuation longer than max_length is an error when evaluating (it cannot be scored whole); training and
    its validation monitor pass `truncate_answers` and keep the continuation's first max_length tokens."""
    encode = _Encoder(tokenizer)
    wanted: set[tuple[str, bool | None]] = set()
    for item in items:
        for context, continuation in zip(item.contexts, item.continuations, strict=True):
            wanted.update(encode.key(s, f) for s, f in _pair_strings(context, continuation))
    encode.prefetch(wanted)
    truncated = 0
    requests = []
    for item in items:
        per_choice = []
        for context, continuation in zip(item.contexts, item.continuations, strict=True):
            context_enc, continuation_enc = _encode_pair(encode, context, continuation)
            if not continuation_enc or not context_enc:
                raise PawError(
                    f"item {item.id!r} of {item.task}: a choice's continuation {continuation!r} adds no tokens "
                    "after its context; check the task's prompt format"
                )
            if len(continuation_enc) > max_length and truncate_answers:
                continuation_enc = continuation_enc[:max_length]
            elif len(continuation_enc) > max_length:
                raise PawError(
                    f"item {item.id!r} of {item.task}: continuation has {len(continuation_enc)} tokens, more than "
                    f"the model's maximum length {max_length}"
                )
            whole = context_enc + continuation_enc
            truncated += len(whole) > max_length + 1
            per_choice.append(ChoiceRequest(whole[-(max_length + 1) :][:-1], continuation_enc))
        requests.append(per_choice)
    if truncated and warn:
        log.warning("%d requests exceed the maximum length %d and were truncated from the left", truncated, max_length)
    return requests


# ---------------------------------------------------------------------------------------------------------------
# Packing and the fast forward pass


def pack_item(index: int, choices: Sequence[ChoiceRequest]) -> PackedItem:
    """Put the longest token prefix all choices' inputs share first, then each choice's remaining tokens."""
    shared = 0
    shortest = min(len(c.inputs) for c in choices)
    while shared < shortest and all(c.inputs[shared] == choices[0].inputs[shared] for c in choices):
        shared += 1
    tokens = list(choices[0].inputs[:shared])
    positions = list(range(shared))
    branches = [0] * shared
    scored_rows = []
    # A repeated choice reuses the first copy's branch, so duplicates tie exactly, as in separate forwards.
    seen: dict[tuple[int, ...], int] = {}
    for k, choice in enumerate(choices):
        first = len(choice.inputs) - len(choice.targets)
        key = (*choice.inputs, -1, *choice.targets)
        if key in seen:
            scored_rows.append(scored_rows[seen[key]])
            continue
        seen[key] = k
        start = len(tokens)
        tokens += choice.inputs[shared:]
        positions += range(shared, len(choice.inputs))
        branches += [k + 1] * (len(choice.inputs) - shared)
        scored_rows.append([i if i < shared else start + i - shared for i in range(first, len(choice.inputs))])
    return PackedItem(index, tokens, positions, branches, scored_rows, [list(c.targets) for c in choices])


def pack_items(tokenizer: Any, items: Sequence[MCItem], max_length: int, *,
               truncate_answers: bool = False) -> list[PackedItem]:
    requests = encode_requests(tokenizer, items, max_length, truncate_answers=truncate_answers)
    return [pack_item(i, choices) for i, choices in enumerate(requests)]


def _attention_masks(model: Any, branches: torch.Tensor, positions: torch.Tensor) -> Any:
    """The 4D mask(s) the model's attention layers take for a batch of packed rows.

    Token q sees token k when k is not after q and k is shared (branch 0) or on q's own branch; padding
    (branch -1) sees only itself, which keeps its outputs finite. Sliding-window layers additionally need
    position(q) - position(k) < window, measured in positions (not row indices) because branches restart them.
    Hybrid models take a dict keyed by layer type.
    """
    config = model.config
    config = getattr(config, "text_config", None) or config
    index = torch.arange(branches.shape[1], device=branches.device)
    q_branch, k_branch = branches[:, :, None], branches[:, None, :]
    causal = index[None, :, None] >= index[None, None, :]
    allowed = causal & (k_branch >= 0) & ((k_branch == 0) | (k_branch == q_branch))
    allowed |= torch.eye(branches.shape[1], dtype=torch.bool, device=branches.device)[None]

    def sliding() -> torch.Tensor:
        near = positions[:, :, None] - positions[:, None, :] < config.sliding_window
        return allowed & near | torch.eye(branches.shape[1], dtype=torch.bool, device=branches.device)[None]

    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - {"full_attention"}:
        unknown = layer_types - {"full_attention", "sliding_attention"}
        if unknown:
            raise PawError(f"cannot score a model with {sorted(unknown)} layers; supported: full and sliding attention")
        masks = {"full_attention": allowed, "sliding_attention": sliding()}
    elif not layer_types and getattr(config, "sliding_window", None):  # e.g. Mistral: every layer slides
        masks = {"": sliding()}
    else:
        masks = {"": allowed}

    implementation = config._attn_implementation
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        masks = {
            name: torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
            for name, mask in masks.items()
        }
    elif implementation != "sdpa":
        raise PawError(
            f"scoring needs the model loaded with attn_implementation 'sdpa' or 'eager', not {implementation!r}"
        )
    masks = {name: mask[:, None] for name, mask in masks.items()}
    return masks[""] if "" in masks else masks


@torch.inference_mode()
def score_packed(model: Any, batch: Sequence[PackedItem]) -> list[tuple[list[float], list[bool]]]:
    """One forward pass over a batch of packed rows: per item, per choice, (log-likelihood, is_greedy)."""
    device = next(model.parameters()).device
    width = max(len(row) for row in batch)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    positions = torch.zeros(len(batch), width, dtype=torch.long)
    branches = torch.full((len(batch), width), -1, dtype=torch.long)
    keep = torch.zeros(len(batch), width, dtype=torch.bool)
    for b, row in enumerate(batch):
        n = len(row)
        tokens[b, :n] = torch.tensor(row.tokens)
        positions[b, :n] = torch.tensor(row.positions)
        branches[b, :n] = torch.tensor(row.branches)
        for rows in row.scored_rows:
            keep[b, rows] = True
    tokens, positions, branches, keep = (t.to(device) for t in (tokens, positions, branches, keep))
    logits = model(
        input_ids=tokens,
        attention_mask=_attention_masks(model, branches, positions),
        position_ids=positions,
        logits_to_keep=keep,
        use_cache=False,
    ).logits
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise PawError(
            f"{type(model).__name__} ignores logits_to_keep masks; PAW needs transformers >= 5.18 for fast scoring"
        )
    # Kept rows come out in row-major order: map each (item, row index) to its line in `logits`.
    line_of = torch.full(keep.shape, -1, dtype=torch.long)
    line_of[keep.cpu()] = torch.arange(logits.shape[0])
    lines, targets = [], []
    for b, row in enumerate(batch):
        for rows, target in zip(row.scored_rows, row.targets, strict=True):
            lines += line_of[b, rows].tolist()
            targets += target
    lines_t = torch.tensor(lines, device=logits.device)
    targets_t = torch.tensor(targets, device=logits.device)
    token_ll, token_greedy = _target_scores(logits, lines_t, targets_t)
    out, cursor = [], 0
    for row in batch:
        lls, greedy = [], []
        for target in row.targets:
            lls.append(float(token_ll[cursor : cursor + len(target)].double().sum()))
            greedy.append(bool(token_greedy[cursor : cursor + len(target)].all()))
            cursor += len(target)
        out.append((lls, greedy))
    return out


def _target_scores(
    logits: torch.Tensor, lines: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(target) and whether target == argmax (first maximum, lm-eval's rule) for each (line, target).

    Each kept position is normalised once even when it scores several choices' first tokens. Memory traffic
    over the vocabulary dominates here, so: one max pass (value and first index), then logsumexp in place on
    the fp32 logits, which this function owns.
    """
    logits = logits.float()
    row_max, row_argmax = logits.max(-1)
    target_logits = logits[lines, targets]
    log_normaliser = row_max + logits.sub_(row_max[:, None]).exp_().sum(-1).log_()
    return (target_logits - log_normaliser[lines]).cpu(), (row_argmax[lines] == targets).cpu()


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error))
    )


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def batch_plan(batch_size: int | str, device: torch.device) -> tuple[int, bool]:
    """(first batch size, whether to halve on out-of-memory) for a `batch_size` of N or "auto"."""
    if batch_size == "auto":
        return AUTO_BATCH_START.get(device.type, 16), True
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
        return batch_size, False
    raise PawError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


def score_in_batches(
    model: Any,
    rows: Sequence[PackedItem],
    size: int,
    halve_on_oom: bool,
    progress: Progress | None = None,
) -> tuple[dict[int, tuple[list[float], list[bool]]], int]:
    """Score `rows` in their given order, `size` at a time; returns scores keyed by `PackedItem.index` and the
    batch size that worked (smaller than `size` after an out-of-memory halving)."""
    device = next(model.parameters()).device
    scores: dict[int, tuple[list[float], list[bool]]] = {}
    start = 0
    while start < len(rows):
        batch = rows[start : start + size]
        try:
            results = score_packed(model, batch)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
            if not (halve_on_oom and _is_oom(error) and size > 1):
                raise
            _empty_cache(device)
            size //= 2
            log.warning("out of memory at batch size %d; retrying with %d", size * 2, size)
            continue
        for row, result in zip(batch, results, strict=True):
            scores[row.index] = result
        start += len(batch)
        if progress is not None:
            progress.update(len(batch))
    return scores, size


def length_order(rows: Sequence[PackedItem]) -> list[PackedItem]:
    """Longest first, as lm-eval: similar lengths share a batch and out-of-memory shows at once."""
    return sorted(rows, key=lambda r: (-len(r), r.index))


def score_rows(
    model: Any,
    rows: Sequence[PackedItem],
    *,
    batch_size: int | str = 8,
    progress_desc: str = "eval",
) -> dict[int, tuple[list[float], list[bool]]]:
    """Score packed rows in length order; returns scores keyed by `PackedItem.index`."""
    size, halve_on_oom = batch_plan(batch_size, next(model.parameters()).device)
    with Progress(len(rows), progress_desc, unit="q") as progress:
        scores, _ = score_in_batches(model, length_order(rows), size, halve_on_oom, progress)
    return scores


def make_records(
    items: Sequence[MCItem], scores: dict[int, tuple[list[float], list[bool]]], rows: Sequence[PackedItem]
) -> list[ItemRecord]:
    """Turn per-choice scores into `ItemRecord`s, in item order, with lm-eval's acc and acc_norm predictions."""
    records = []
    for i, item in enumerate(items):
        lls, greedy = scores[i]
        norm = [ll / len(c) if len(c) else float("-inf") for ll, c in zip(lls, item.choices, strict=True)]
        records.append(
            ItemRecord(
                id=item.id,
                task=item.task,
                loglikelihoods=lls,
                num_tokens=[len(t) for t in rows[i].targets],
                prediction=_argmax(lls),
                prediction_norm=_argmax(norm),
                gold=item.gold,
                is_greedy=greedy,
            )
        )
    return records


def _argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as numpy.argmax (lm-eval's tie rule)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_items(
    model: Any,
    tokenizer: Any,
    items: list[MCItem],
    *,
    batch_size: int | str = 8,
    progress_desc: str = "eval",
    max_length: int | None = None,
) -> list[ItemRecord]:
    """Score multiple-choice items as lm-eval 0.4.x does, one record per item in the given order.

    `batch_size` counts items (each item's choices share one row); `"auto"` picks a size and halves on OOM.
    """
    if not items:
        return []
    rows = pack_items(tokenizer, items, max_length or model_max_length(model, tokenizer))
    scores = score_rows(model, rows, batch_size=batch_size, progress_desc=progress_desc)
    return make_records(items, scores, rows)


@torch.inference_mode()
def score_items_reference(
    model: Any, tokenizer: Any, items: list[MCItem], *, max_length: int | None = None
) -> list[ItemRecord]:
    """The naive scorer: one forward per (context, choice), full-vocabulary logits everywhere, no batching."""
    requests = encode_requests(tokenizer, items, max_length or model_max_length(model, tokenizer))
    device = next(model.parameters()).device
    scores = {}
    for i, choices in enumerate(requests):
        lls, greedy = [], []
        for choice in choices:
            logits = model(input_ids=torch.tensor([choice.inputs], device=device), use_cache=False).logits[0]
            logprobs = logits[-len(choice.targets) :].float().log_softmax(-1)
            targets = torch.tensor(choice.targets, device=device)
            lls.append(float(logprobs.gather(-1, targets[:, None]).double().sum()))
            greedy.append(bool((logprobs.argmax(-1) == targets).all()))
        scores[i] = (lls, greedy)
    rows = [pack_item(i, choices) for i, choices in enumerate(requests)]
    return make_records(items, scores, rows)

