"""Optional refinement: fine-tune the transferred factors so target+ΔW_t imitates source+ΔW_s (no labels).

Without items, teacher and student next-token distributions are compared at character-aligned positions over
the vocabulary both tokenizers share (tokens decoding to the same string), renormalised on that set. With
multiple-choice items, they are compared over each item's answer options (softmax of the options' summed
continuation log-likelihoods); the gold answer is never read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from paw.errors import PawError
from paw.progress import Progress
from paw.transfer.adapter_io import factor_lowrank
from paw.tasks.items import MCItem
from paw.transfer.calibration import PairedBatch, added_updates, final_hidden, head_logprobs, kl_divergence, position_logprobs

DISTILL_OBJECTIVES = ("shift", "teacher")


def shared_vocabulary(source_tokenizer: Any, target_tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(source ids, target ids) of tokens that decode to the same non-empty string in both tokenizers."""
    vocab_s, vocab_t = source_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if vocab_s == vocab_t:
        ids = torch.tensor(sorted(vocab_s.values()))
        return ids, ids

    def by_text(tokenizer: Any, vocab: dict[str, int]) -> dict[str, int]:
        texts: dict[str, int] = {}
        for token_id in sorted(vocab.values()):
            text = tokenizer.decode([token_id])
            if text and text not in texts:
                texts[text] = token_id
        return texts

    texts_s, texts_t = by_text(source_tokenizer, vocab_s), by_text(target_tokenizer, vocab_t)
    shared = sorted(texts_s.keys() & texts_t.keys())
    if len(shared) < 2:
        raise PawError("the two tokenizers share no vocabulary to distill over; use --distill_steps 0")
    return torch.tensor([texts_s[t] for t in shared]), torch.tensor([texts_t[t] for t in shared])


def answer_token_logprobs(model: nn.Module, tokenizer: Any, item: MCItem,
                          max_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities (fp32, full vocabulary) at every position that predicts a continuation token,
    with each position's option index and the token it predicts.

    Continuation tokens are those ending after the context's last character (found by offsets), so each
    tokenizer scores the same characters."""
    device = next(model.parameters()).device
    encodings = [
        tokenizer(context + continuation, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
        for context, continuation in zip(item.contexts, item.continuations)
    ]
    length = max(len(e["input_ids"]) for e in encodings)
    ids = torch.zeros(len(encodings), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows, cols, targets = [], [], []
    for row, (encoding, context) in enumerate(zip(encodings, item.contexts)):
        n = len(encoding["input_ids"])
        ids[row, :n], mask[row, :n] = torch.tensor(encoding["input_ids"]), 1
        for position in range(1, n):
            start, end = encoding["offset_mapping"][position]
            if end > start and end > len(context):
                rows.append(row)
                cols.append(position - 1)  # the logits at position-1 predict token `position`
                targets.append(encoding["input_ids"][position])
    hidden = final_hidden(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    rows_t = torch.tensor(rows, device=device)
    logprobs = head_logprobs(model, hidden[rows_t, torch.tensor(cols, device=device)])
    return logprobs, rows_t, torch.tensor(targets, device=device)


def option_logprobs(model: nn.Module, tokenizer: Any, item: MCItem, max_tokens: int = 512) -> torch.Tensor:
    """log-softmax over an item's options of each option's summed continuation log-likelihood."""
    logprobs, options, targets = answer_token_logprobs(model, tokenizer, item, max_tokens)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)
    scores = torch.zeros(len(item.contexts), device=logprobs.device).index_add(0, options, picked)
    return torch.log_softmax(scores, dim=0)


def distill_updates(
    source: nn.Module,
    target: nn.Module,
    source_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    rank: int,
    lr: float = 1e-4,
    batches: list[PairedBatch] | None = None,
    vocab: tuple[torch.Tensor, torch.Tensor] | None = None,
    items: list[MCItem] | None = None,
    tokenizers: tuple[Any, Any] | None = None,
    objective: str = "shift",
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """`steps` Adam steps on rank-`rank` target factors (starting from `target_updates`); returns them and the
    KL(teacher ‖ student) per step. Over answer options when `items` (and `tokenizers`) are given, else over
    next tokens at the aligned positions of `batches` restricted to `vocab`.

    `objective` "teacher": the student imitates source+ΔW_s itself. "shift": the student's target is the target
    base's distribution moved by the source LoRA's log-probability change, softmax(log p_t + log p_s+ΔW − log p_s):
    what the LoRA changed, not what the (possibly weaker or stronger) source base believes."""
    device = next(target.parameters()).device
    if objective not in DISTILL_OBJECTIVES:
        raise PawError(f"unknown distillation objective {objective!r}; valid: {', '.join(DISTILL_OBJECTIVES)}")
    # An example is an item (scored over its answer options) or a paired batch (next tokens, shared vocabulary).
    pool: list[Any] = list(items) if items else [b for b in batches if b.num_positions > 0]
    if not items:
        ids_s, ids_t = vocab[0].to(next(source.parameters()).device), vocab[1].to(device)

    def score_s(example: Any) -> torch.Tensor:
        if items:
            return option_logprobs(source, tokenizers[0], example).to(device)
        return position_logprobs(source, example.source, ids_s).to(device)

    def score_t(example: Any) -> torch.Tensor:
        if items:
            return option_logprobs(target, tokenizers[1], example)
        return position_logprobs(target, example.target, ids_t)

    def teacher_student(example: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            with added_updates(source, source_updates):
                teacher = score_s(example)
            if objective == "shift":
                # The source LoRA's change of log-probabilities, applied to the target base's own beliefs.
                teacher = torch.log_softmax(score_t(example) + teacher - score_s(example), dim=-1)
        with added_updates(target, params):
            return teacher, score_t(example)

    params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    generator = torch.Generator().manual_seed(0)
    for name, (B, A) in target_updates.items():
        B_r, A_r = factor_lowrank(B, A, rank)
        if not A_r.any():
            # A zero update (e.g. scaled to 0) has zero gradients in both factors: start as LoRA does instead.
            A_r = torch.randn(A_r.shape, generator=generator) / A_r.shape[1] ** 0.5
        params[name] = (nn.Parameter(B_r.to(device)), nn.Parameter(A_r.to(device)))
    optimizer = torch.optim.Adam([p for pair in params.values() for p in pair], lr=lr)
    # Linear decay to zero: the start is already close, so late steps must not overshoot it.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    was_training = target.training
    target.eval()  # no dropout: the student must match a deterministic teacher
    frozen = [p for p in target.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        with Progress(steps, "transfer: distill", unit="step") as progress:
            for step in range(steps):
                teacher, student = teacher_student(pool[step % len(pool)])
                loss = kl_divergence(teacher, student)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                progress.set_postfix(f"kl={losses[-1]:.4g}")
                progress.update(1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        target.train(was_training)
    return {name: (B.detach(), A.detach()) for name, (B, A) in params.items()}, losses
