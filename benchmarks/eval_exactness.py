"""Per-item log-likelihoods of PAW vs lm-evaluation-harness (HF backend) on the same model and ARC-Challenge items.

lm-eval is fed PAW's items through `HFLM.loglikelihood` on the (context, continuation) requests, so its own
tokenisation and forward pass are what is compared. Prints the largest difference, how many choices differ by
more than the tolerance, is_greedy agreement, and acc / acc_norm from each side's log-likelihoods.

    python benchmarks/eval_exactness.py --model smollm2-135m --limit 300
"""

from __future__ import annotations

from eval_speed import benchmark_setup, lm_eval_loglikelihoods, lm_eval_model

from paw.evaluate.scoring import make_records, pack_items, model_max_length, score_items
from paw.evaluate.metrics import compute_metrics


def main() -> None:
    args, model, tokenizer, items = benchmark_setup(
        __doc__.splitlines()[0], None, {"--tolerance": {"type": float, "default": 1e-3}})
    ours = score_items(model, tokenizer, items, batch_size=args.batch_size, progress_desc="paw")
    theirs_raw = lm_eval_loglikelihoods(lm_eval_model(model, tokenizer, args.batch_size), items)
    # lm-eval's numbers through the same acc / acc_norm rules (argmax; argmax of ll / len(choice)).
    rows = pack_items(tokenizer, items, model_max_length(model, tokenizer))
    theirs = make_records(
        items, {i: ([ll for ll, _ in r], [g for _, g in r]) for i, r in enumerate(theirs_raw)}, rows
    )

    diffs = [abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o.loglikelihoods, t.loglikelihoods)]
    greedy_same = sum(o.is_greedy == t.is_greedy for o, t in zip(ours, theirs))
    pred_same = sum(o.prediction == t.prediction for o, t in zip(ours, theirs))
    norm_same = sum(o.prediction_norm == t.prediction_norm for o, t in zip(ours, theirs))
    m_ours, m_theirs = compute_metrics(ours), compute_metrics(theirs)
    print(f"\nmodel {args.model} ({model.dtype}), task {args.task}, {len(items)} questions, {len(diffs)} choices")
    print(f"max |ll difference| {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}, "
          f"over {args.tolerance:g}: {sum(d > args.tolerance for d in diffs)}")  # fmt: skip
    print(f"same prediction (acc) {pred_same}/{len(items)}, same prediction (acc_norm) {norm_same}/{len(items)}, "
          f"same is_greedy {greedy_same}/{len(items)}")  # fmt: skip
    for name in ("acc", "acc_norm"):
        print(f"{name:8s} PAW {m_ours[name]:.6f}  lm-eval {m_theirs[name]:.6f}  identical: {m_ours[name] == m_theirs[name]}")


if __name__ == "__main__":
    main()
