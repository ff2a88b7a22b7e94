"""Running two bases on the same unlabeled text and pairing their token positions.

Two tokenizers cut a text differently, so positions are paired by characters: at every character offset
where both tokenizations have a token boundary, the last token ending there in each model has read exactly
the same text, so its hidden states (and next-token distribution) are comparable across the models.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from paw.errors import PawError


def boundary_tokens(offsets: list[tuple[int, int]]) -> dict[int, int]:
    """Character end offset -> index of the last non-empty token ending there (special tokens have no span)."""
    ends: dict[int, int] = {}
    for index, (start, end) in enumerate(offsets):
        if end > start:
            ends[end] = index
    return ends


def aligned_positions(offsets_source: list[tuple[int, int]], offsets_target: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(source token index, target token index) at every character boundary both tokenizations share."""
    ends_s, ends_t = boundary_tokens(offsets_source), boundary_tokens(offsets_target)
    return [(ends_s[end], ends_t[end]) for end in sorted(ends_s.keys() & ends_t.keys())]


@dataclass
class ModelBatch:
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask (right-padded)
    rows: torch.Tensor  # batch row of each aligned position
    cols: torch.Tensor  # token index of each aligned position


@dataclass
class PairedBatch:
    source: ModelBatch
    target: ModelBatch

    @property
    def num_positions(self) -> int:
        return int(self.source.rows.numel())

    def subsample(self, max_positions: int) -> PairedBatch:
        """The same batch keeping at most `max_positions` aligned positions, evenly spread (bounds the size of
        next-token distributions over large vocabularies)."""
        if self.num_positions <= max_positions:
            return self
        keep = torch.linspace(0, self.num_positions - 1, max_positions).round().long()
        return PairedBatch(
            ModelBatch(self.source.inputs, self.source.rows[keep.to(self.source.rows.device)], self.source.cols[keep.to(self.source.cols.device)]),
            ModelBatch(self.target.inputs, self.target.rows[keep.to(self.target.rows.device)], self.target.cols[keep.to(self.target.cols.device)]),
        )


def _encode(tokenizer: Any, text: str, max_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def _model_batch(
    encodings: list[list[int]], positions: list[list[int]], pad_id: int, device: torch.device
) -> ModelBatch:
    length = max(len(ids) for ids in encodings)
    input_ids = torch.full((len(encodings), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), length), dtype=torch.long)
    for row, ids in enumerate(encodings):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    rows = torch.tensor([row for row, cols in enumerate(positions) for _ in cols], dtype=torch.long)
    cols = torch.tensor([col for cols in positions for col in cols], dtype=torch.long)
    return ModelBatch({"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}, rows.to(device), cols.to(device))


def paired_batches(
    texts: list[str],
    source_tokenizer: Any,
    target_tokenizer: Any,
    *,
    source_device: torch.device,
    target_device: torch.device,
    max_tokens: int = 256,
    batch_size: int = 8,
) -> list[PairedBatch]:
    """Tokenize `texts` for both models and keep, per batch, the aligned positions (same order in both)."""
    if not texts:
        raise PawError("no calibration texts; pass some unlabeled prompts (--calibration_file or --dataset)")
    for tokenizer in (source_tokenizer, target_tokenizer):
        if not getattr(tokenizer, "is_fast", False):
            raise PawError(
                f"{type(tokenizer).__name__} gives no character offsets; paw pairs tokens by offsets and needs a "
                "fast tokenizer; load the model with its tokenizer.json (AutoTokenizer use_fast=True)"
            )
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        enc_s, enc_t, pos_s, pos_t = [], [], [], []
        for text in chunk:
            ids_s, off_s = _encode(source_tokenizer, text, max_tokens)
            ids_t, off_t = _encode(target_tokenizer, text, max_tokens)
            pairs = aligned_positions(off_s, off_t)
            enc_s.append(ids_s)
            enc_t.append(ids_t)
            pos_s.append([p for p, _ in pairs])
            pos_t.append([q for _, q in pairs])
        batches.append(
            PairedBatch(
                _model_batch(enc_s, pos_s, _pad_id(source_tokenizer), source_device),
                _model_batch(enc_t, pos_t, _pad_id(target_tokenizer), target_device),
            )
        )
    if sum(batch.num_positions for batch in batches) == 0:
        raise PawError(
            "the calibration texts give no token boundary shared by both tokenizers; pass longer, ordinary "
            "text prompts (both tokenizers must return offsets: use fast tokenizers)"
        )
    return batches


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _StopForward(Exception):
    """Raised by a hook once the layers we need have run, so the rest of the forward pass is skipped."""


@torch.no_grad()
def forward_until(model: nn.Module, batch: ModelBatch, last_module: nn.Module | None = None) -> Any:
    """Run `model` on `batch`; when `last_module` is given stop right after it (returns None then)."""
    handle = None
    if last_module is not None:

        def stop(*_: Any) -> None:
            raise _StopForward

        handle = last_module.register_forward_hook(stop)
    try:
        return model(**batch.inputs, use_cache=False)
    except _StopForward:
        return None
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def added_updates(model: nn.Module, updates: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float = 1.0) -> Iterator[None]:
    """Temporarily add ΔW = scale · B @ A to the named linear modules' outputs (as LoRA does), via hooks."""

    def make_hook(B: torch.Tensor, A: torch.Tensor):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            return output + (scale * ((x.to(A.dtype) @ A.T) @ B.T)).to(output.dtype)

        return hook

    handles = []
    try:
        for name, (B, A) in updates.items():
            device = model.get_submodule(name).weight.device
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(B.to(device), A.to(device))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_logprobs(model: nn.Module, hidden: torch.Tensor, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token log-probabilities (fp32) from final hidden states (n, d), optionally over a vocabulary subset;
    final-logit soft-capping (gemma2) is applied as the model does."""
    head = model.get_output_embeddings()
    weight = head.weight if vocab_ids is None else head.weight[vocab_ids]
    logits = (hidden.to(weight.dtype) @ weight.T).float()
    if getattr(head, "bias", None) is not None:
        logits = logits + (head.bias if vocab_ids is None else head.bias[vocab_ids]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


def final_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states after the final norm, (batch, seq, d); the output head runs on one position only."""
    return model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]


def position_logprobs(model: nn.Module, batch: ModelBatch, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token log-probabilities at the batch's aligned positions: the output head runs on those positions
    only, never on every position times the whole vocabulary."""
    return head_logprobs(model, final_hidden(model, batch.inputs)[batch.rows, batch.cols], vocab_ids)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p ‖ q) from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(dim=-1).mean()


@torch.no_grad()
def shift_agreement(
    source: nn.Module,
    target: nn.Module,
    source_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batches: list[PairedBatch],
    vocab: tuple[torch.Tensor, torch.Tensor],
) -> float:
    """Label-free check of a transfer: the mean over aligned positions of the cosine between the source's and
    the target's next-token log-probability shifts (base+update minus base), over the shared vocabulary and
    centred per position. 1: the target's answers move exactly as the source's do; 0: unrelated."""
    ids_s, ids_t = vocab[0].to(model_device(source)), vocab[1].to(model_device(target))
    total, count = 0.0, 0
    for batch in batches:
        shifts = []
        for model, side, updates, ids in ((source, batch.source, source_updates, ids_s), (target, batch.target, target_updates, ids_t)):
            base = position_logprobs(model, side, ids)
            with added_updates(model, updates):
                shift = position_logprobs(model, side, ids) - base
            shifts.append((shift - shift.mean(dim=-1, keepdim=True)).cpu())
        total += float(torch.nn.functional.cosine_similarity(shifts[0], shifts[1], dim=-1).sum())
        count += batch.num_positions
    return total / max(count, 1)
