"""Optional refinement: fine-tune the transferred factors so target+ΔW_t imitates source+ΔW_s (no labels).

Teacher and student next-token distributions are compared at character-aligned positions over the
vocabulary both tokenizers share (tokens decoding to the same string), renormalised on that set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from paw.errors import PawError
from paw.progress import Progress
from paw.transfer.adapter_io import factor_lowrank
from paw.transfer.calibration import PairedBatch, added_updates, kl_divergence, position_logprobs


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


def distill_updates(
    source: nn.Module,
    target: nn.Module,
    source_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target_updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batches: list[PairedBatch],
    vocab: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    rank: int,
    lr: float = 1e-3,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """`steps` Adam steps on rank-`rank` target factors (starting from `target_updates`); returns them and the
    KL(teacher ‖ student) per step."""
    batches = [b for b in batches if b.num_positions > 0]
    device = next(target.parameters()).device
    ids_s, ids_t = vocab[0].to(next(source.parameters()).device), vocab[1].to(device)
    params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    for name, (B, A) in target_updates.items():
        B_r, A_r = factor_lowrank(B, A, rank)
        params[name] = (nn.Parameter(B_r.to(device)), nn.Parameter(A_r.to(device)))
    optimizer = torch.optim.Adam([p for pair in params.values() for p in pair], lr=lr)
    was_training = target.training
    target.eval()  # no dropout: the student must match a deterministic teacher
    frozen = [p for p in target.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        with Progress(steps, "transfer: distill", unit="step") as progress:
            for step in range(steps):
                batch = batches[step % len(batches)]
                with torch.no_grad(), added_updates(source, source_updates):
                    teacher = position_logprobs(source, batch.source, ids_s).to(device)
                with added_updates(target, params):
                    student = position_logprobs(target, batch.target, ids_t)
                loss = kl_divergence(teacher, student)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                progress.set_postfix(f"kl={losses[-1]:.4g}")
                progress.update(1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        target.train(was_training)
    return {name: (B.detach(), A.detach()) for name, (B, A) in params.items()}, losses
