"""How much of a trained LoRA's gain is a context-free output bias, and does that bias carry to another base?

The bias is the LoRA's mean next-token log-probability shift (base + LoRA minus base, full vocabulary) over the
answer positions of `--calibration` unlabeled train items. Added to the logits at every position it is a LoRA
without context: on the source it shows how much of the LoRA's accuracy gain is such a prior; mapped onto the
target over the tokens both tokenizers spell alike (other target tokens get the median shift, i.e. neutral), it
shows whether that prior is worth anything to the other base. Accuracy on the transfer study's evaluation sample.

    python benchmarks/output_bias_probe.py --source smollm2-135m --target gemma3-270m --task arc-challenge \
        --adapter runs/transfer_study/train/<smollm2 arc-challenge run>/adapter
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from peft import PeftModel

from paw.evaluate.scoring import score_items
from paw.models import load_base
from paw.tasks import load_items
from paw.tasks.items import MCItem
from paw.tasks.sampling import sample_items
from paw.transfer.api import task_items
from paw.transfer.distill import answer_token_logprobs, shared_vocabulary


@torch.no_grad()
def lora_output_bias(model: PeftModel, tokenizer: Any, items: list[MCItem]) -> torch.Tensor:
    total, count = torch.zeros(()), 0
    for item in items:
        tuned = answer_token_logprobs(model, tokenizer, item)[0]
        with model.disable_adapter():
            base = answer_token_logprobs(model, tokenizer, item)[0]
        total = total + (tuned - base).sum(0)
        count += tuned.shape[0]
    return total / count


def accuracy(model: torch.nn.Module, tokenizer: Any, items: list[MCItem], bias: torch.Tensor | None = None) -> str:
    """acc / acc_norm (%), with `bias` added to the logits (a hook on the output head) when given."""
    def add_bias(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return out + bias.to(out.dtype)

    handle = model.get_output_embeddings().register_forward_hook(add_bias) if bias is not None else None
    try:
        records = score_items(model, tokenizer, items, batch_size=16)
    finally:
        if handle is not None:
            handle.remove()
    acc = 100 * sum(r.prediction == r.gold for r in records) / len(records)
    acc_norm = 100 * sum(r.prediction_norm == r.gold for r in records) / len(records)
    return f"acc {acc:.1f}  acc_norm {acc_norm:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--adapter", required=True, help="The source LoRA.")
    parser.add_argument("--calibration", type=int, default=128, help="Unlabeled train items for the bias.")
    parser.add_argument("--eval_items", type=int, default=500, help="The transfer study's sample size.")
    args = parser.parse_args()

    items = load_items(args.task)
    items = sample_items(items, min(1.0, args.eval_items / len(items)))
    source = load_base(args.source, dtype="bfloat16")
    tuned = PeftModel.from_pretrained(source.model, args.adapter).eval()
    start = time.time()
    bias = lora_output_bias(tuned, source.tokenizer, task_items([args.task], args.calibration))
    print(f"bias over {args.calibration} items in {time.time() - start:.0f} s", flush=True)
    print(f"source + LoRA         {accuracy(tuned, source.tokenizer, items)}", flush=True)
    with tuned.disable_adapter():
        print(f"source base           {accuracy(tuned, source.tokenizer, items)}", flush=True)
        print(f"source base + bias    {accuracy(tuned, source.tokenizer, items, bias)}", flush=True)
    source_tokenizer = source.tokenizer
    del tuned, source

    target = load_base(args.target, dtype="bfloat16")
    ids_s, ids_t = shared_vocabulary(source_tokenizer, target.tokenizer)
    mapped = torch.full((target.model.get_output_embeddings().weight.shape[0],), float(bias[ids_s].median()))
    mapped[ids_t] = bias[ids_s]
    print(f"target base           {accuracy(target.model, target.tokenizer, items)}", flush=True)
    print(f"target base + bias    {accuracy(target.model, target.tokenizer, items, mapped)} "
          f"({len(ids_s)} shared tokens)", flush=True)


if __name__ == "__main__":
    main()
