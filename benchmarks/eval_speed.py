"""PAW scoring vs lm-evaluation-harness (HF backend) on the same model, task, items and batch size, in one run.

Prints questions/s for each, the ratio, and the share of the machine's measured matmul FLOP/s each achieves
(useful FLOPs only: 2 x parameters per token run, plus the vocabulary projection where each computes it).
Runs alternate (PAW, lm-eval, PAW, ...) and the best of `--repeats` counts, so load from other processes
hurts both alike.

    python benchmarks/eval_speed.py --model smollm2-135m --task arc-challenge --limit 200 --batch_size 8
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from paw.evaluate.scoring import encode_requests, model_max_length, pack_items, score_items
from paw.models import load_base
from paw.tasks import load_items
from paw.tasks.items import MCItem


def lm_eval_model(model: Any, tokenizer: Any, batch_size: int) -> Any:
    """lm-eval's HFLM around the very model object PAW scores (same weights, dtype, attention implementation)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))


def lm_eval_loglikelihoods(lm: Any, items: list[MCItem]) -> list[list[tuple[float, bool]]]:
    """lm-eval's own `loglikelihood` on every (context, continuation) pair; per item, per choice."""
    from lm_eval.api.instance import Instance

    requests = [
        Instance("loglikelihood", {}, (context, continuation), idx)
        for item in items
        for idx, (context, continuation) in enumerate(zip(item.contexts, item.continuations))
    ]
    flat = iter(lm.loglikelihood(requests, disable_tqdm=True))
    return [[next(flat) for _ in item.choices] for item in items]


def matmul_flops_per_s(dtype: torch.dtype, device: torch.device, size: int = 2048, reps: int = 10) -> float:
    """The machine's dense matmul throughput in `dtype`: the ceiling the model forward can approach."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def useful_flops(model: Any, tokenizer: Any, items: list[MCItem]) -> tuple[float, float]:
    """(PAW, lm-eval) forward FLOPs, without padding: body parameters x tokens each runs, plus the vocabulary
    projection at the positions each projects (PAW: scored only; lm-eval: every input position)."""
    embed = model.get_input_embeddings().weight
    hidden, vocab = embed.shape[1], model.get_output_embeddings().weight.shape[0]
    body = sum(p.numel() for p in model.parameters()) - embed.numel()
    if model.get_output_embeddings().weight.data_ptr() != embed.data_ptr():
        body -= vocab * hidden  # an untied lm_head is counted as the vocabulary projection below
    rows = pack_items(tokenizer, items, model_max_length(model, tokenizer))
    paw_tokens = sum(len(r) for r in rows)
    scored = sum(len(t) for r in rows for t in r.targets)
    # lm-eval runs each (context, continuation) pair separately: input = context + continuation - 1 token.
    lm_tokens = sum(len(c.inputs) for choices in encode_requests(tokenizer, items, 10**9) for c in choices)
    paw = 2 * body * paw_tokens + 2 * hidden * vocab * scored
    lm = 2 * body * lm_tokens + 2 * hidden * vocab * lm_tokens
    return paw, lm


def benchmark_setup(description: str, limit: int | None, extra: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """Parse the options both benchmarks share (plus `extra`), set threads, load the model and the items.

    Returns (args, model, tokenizer, items)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arc-challenge")
    parser.add_argument("--limit", type=int, default=limit, help="First N items (None: the whole split)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="float32 (the exact reference) or bfloat16")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a CPU shared with other jobs 1 is often fastest)")
    for flag, options in extra.items():
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_base(args.model, dtype=args.dtype)
    return args, loaded.model, loaded.tokenizer, load_items(args.task)[: args.limit]


def main() -> None:
    args, model, tokenizer, items = benchmark_setup(
        __doc__.splitlines()[0], 200, {"--repeats": {"type": int, "default": 2}})
    lm = lm_eval_model(model, tokenizer, args.batch_size)
    runs = {
        "paw": lambda: score_items(model, tokenizer, items, batch_size=args.batch_size, progress_desc="paw"),
        "lm-eval": lambda: lm_eval_loglikelihoods(lm, items),
    }
    # Warm-up: allocator, kernels, tokenizer caches.
    score_items(model, tokenizer, items[:8], batch_size=args.batch_size, progress_desc="warm-up")
    lm_eval_loglikelihoods(lm, items[:8])
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            _sync(model.device)
            start = time.perf_counter()
            run()
            _sync(model.device)
            best[name] = min(best[name], time.perf_counter() - start)

    peak = matmul_flops_per_s(model.dtype, model.device)
    flops = dict(zip(runs, useful_flops(model, tokenizer, items)))
    print(f"\nmodel {args.model} ({model.config.model_type}, {model.dtype}, {model.config._attn_implementation}), "
          f"task {args.task}, {len(items)} questions, batch size {args.batch_size}, device {model.device}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for name in runs:
        achieved = flops[name] / best[name]
        print(f"{name:8s} {len(items) / best[name]:8.2f} questions/s  {best[name]:7.2f} s  "
              f"useful {achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / peak:5.1f}% of peak")  # fmt: skip
    print(f"speed-up PAW / lm-eval: {best['lm-eval'] / best['paw']:.2f}x")


if __name__ == "__main__":
    main()
