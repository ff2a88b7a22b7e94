"""The fast scorer against the naive reference (and lm-eval itself where installed) on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.errors import PawError
from paw.evaluate.scoring import (
    make_records,
    model_max_length,
    pack_items,
    score_items,
    score_items_reference,
)
from paw.tasks.items import MCItem

JAR = "How do you open a jar? Twist the lid counterclockwise until it loosens. "
ITEMS = [
    MCItem(
        "arc-1",
        "arc",
        ("Question: Which gas do plants take in from the air?\nAnswer:",) * 4,
        (" carbon dioxide", " oxygen", " water vapor and more text here", " oxygen"),  # a duplicate choice too
        ("carbon dioxide", "oxygen", "water vapor and more text here", "oxygen"),
        0,
    ),
    # WinoGrande-style: contexts differ, the continuation is shared.
    MCItem(
        "wino-1",
        "winogrande",
        ("Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"),
        (" always got the easier cases.",) * 2,
        ("Sarah", "Maria"),
        1,
    ),
    MCItem("empty-1", "lambada", ("", ""), ("The capital of France is Paris.", "The capital of Italy is Paris."), ("a", "b"), 0),
    # Trailing space in the context moves to the continuation.
    MCItem("space-1", "arc", ("The capital of France is ",) * 2, ("Paris", "Rome"), ("Paris", "Rome"), 0),
    # Longer than the tiny gemma models' sliding window (16), so windowed layers matter.
    MCItem(
        "long-1",
        "piqa",
        (JAR * 3 + "Goal: keep bread fresh.",) * 2,
        (" Solution: store it in a sealed bag at room temperature.", " no"),
        ("store it in a sealed bag at room temperature.", "no"),
        1,
    ),
]
ARCHS = ("llama", "qwen2", "gemma2", "gemma3_text")


def _load(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    # init_lora_weights=False gives a nonzero B, so the adapter really changes the outputs.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(model, config).eval()


def _max_diff(a, b):
    assert [r.id for r in a] == [r.id for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra.loglikelihoods, rb.loglikelihoods))


@pytest.mark.parametrize("adapter", [False, True], ids=["base", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_scorer_matches_reference(tiny_model, arch, adapter):
    model, tokenizer = _load(tiny_model(arch))
    base_reference = score_items_reference(model, tokenizer, ITEMS) if adapter else None
    if adapter:
        model = _with_lora(model)
    reference = score_items_reference(model, tokenizer, ITEMS)
    if adapter:
        assert _max_diff(reference, base_reference) > 1e-2, "the adapter should change the scores"
    assert max(len(row) for row in pack_items(tokenizer, ITEMS, 512)) > 16
    for batch_size in (1, 8):
        fast = score_items(model, tokenizer, ITEMS, batch_size=batch_size)
        assert _max_diff(fast, reference) < 1e-4
        for f, r in zip(fast, reference):
            assert (f.prediction, f.prediction_norm, f.num_tokens, f.is_greedy) == (
                r.prediction,
                r.prediction_norm,
                r.num_tokens,
                r.is_greedy,
            )


def test_shared_prefix_is_computed_once(tiny_model):
    _, tokenizer = _load(tiny_model("llama"))
    arc, wino = pack_items(tokenizer, ITEMS[:2], 512)
    ctx = len(tokenizer(ITEMS[0].contexts[0])["input_ids"])
    # The context appears once; each distinct choice adds only its continuation tokens (its last one is not input).
    assert len(arc) == ctx + sum(len(t) - 1 for t in arc.targets[:3])
    assert arc.scored_rows[3] == arc.scored_rows[1]  # the repeated " oxygen" reuses its first copy
    assert arc.branches[:ctx] == [0] * ctx
    # WinoGrande: the words before the option are shared.
    assert wino.branches.count(0) >= len(tokenizer("Sarah was a much better surgeon than Maria so")["input_ids"])


def test_encoding_follows_lm_eval(tiny_model):
    """Trailing context spaces join the continuation; an empty context is conditioned on BOS;
    gemma tokenizers add BOS, llama-style test tokenizers do not."""
    for arch, bos in (("llama", False), ("gemma2", True)):
        _, tokenizer = _load(tiny_model(arch))
        space, empty = pack_items(tokenizer, [ITEMS[3], ITEMS[2]], 512)
        assert space.targets[0] == tokenizer(" Paris", add_special_tokens=False)["input_ids"]
        assert (space.tokens[0] == tokenizer.bos_token_id) is bos
        assert empty.tokens[0] == tokenizer.bos_token_id
        assert empty.targets[0] == tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]


def test_left_truncation_matches_reference(tiny_model):
    model, tokenizer = _load(tiny_model("qwen2"))
    fast = score_items(model, tokenizer, ITEMS, max_length=30)
    reference = score_items_reference(model, tokenizer, ITEMS, max_length=30)
    assert _max_diff(fast, reference) < 1e-4
    assert model_max_length(model, tokenizer) == 512
    with pytest.raises(PawError, match="continuation has"):  # lm-eval asserts; we say what is wrong
        score_items(model, tokenizer, ITEMS, max_length=10)


class _OutOfMemoryAbove(torch.nn.Module):
    """The real model, except that batches wider than `limit` raise the out-of-memory error a GPU would."""

    def __init__(self, model, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.config, self.seen = model, limit, model.config, []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(input_ids=input_ids, **kwargs)


def test_auto_batch_size_halves_on_oom(tiny_model):
    model, tokenizer = _load(tiny_model("llama"))
    items = ITEMS * 4
    flaky = _OutOfMemoryAbove(model, limit=5)
    records = score_items(flaky, tokenizer, items, batch_size="auto")
    assert flaky.seen[:3] == [16, 8, 4] and max(flaky.seen[2:]) == 4
    assert _max_diff(records, score_items(model, tokenizer, items, batch_size=20)) < 1e-4
    with pytest.raises(torch.OutOfMemoryError):  # a fixed batch size is the user's choice: no silent retry
        score_items(_OutOfMemoryAbove(model, limit=5), tokenizer, items, batch_size=8)
    with pytest.raises(PawError):
        score_items(model, tokenizer, items, batch_size=0)


def test_acc_norm_divides_by_choice_characters():
    item = MCItem("x", "t", ("q",) * 3, (" ab", " abcdef", " z"), ("ab", "abcdef", "z"), 1)
    rows = [type("Row", (), {"targets": [[1], [1, 2], [3]]})()]
    (record,) = make_records([item], {0: ([-4.0, -6.0, -4.0], [False, True, False])}, rows)
    assert record.prediction == 0  # ties go to the first choice, as numpy.argmax
    assert record.prediction_norm == 1  # -6/6 beats -4/2 and -4/1
    assert record.num_tokens == [1, 2, 1] and record.correct_norm and not record.correct


def test_same_records_as_lm_eval(tiny_model):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    for arch in ("llama", "gemma2"):
        model, tokenizer = _load(tiny_model(arch))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu")
        requests = [
            Instance("loglikelihood", {}, (context, continuation), 0)
            for item in ITEMS
            for context, continuation in zip(item.contexts, item.continuations)
        ]
        theirs = lm.loglikelihood(requests, disable_tqdm=True)
        ours = [(ll, g) for r in score_items(model, tokenizer, ITEMS) for ll, g in zip(r.loglikelihoods, r.is_greedy)]
        assert max(abs(a[0] - b[0]) for a, b in zip(theirs, ours)) < 1e-4
        assert [a[1] for a in theirs] == [b[1] for b in ours]


def test_is_greedy_when_the_continuation_is_the_argmax(tiny_model):
    model, tokenizer = _load(tiny_model("qwen2"))

    def greedy_text(context: str) -> str | None:
        """The model's greedy next token as text, if that text encodes back to the same token after the context."""
        ids = tokenizer(context)["input_ids"]
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        text = tokenizer.decode([token])
        return text if tokenizer(context + text)["input_ids"] == ids + [token] else None

    contexts = [f"{JAR}{'x' * n}" for n in range(12)] + [item.contexts[0] for item in ITEMS if item.contexts[0]]
    context, text = next((c, t) for c in contexts if (t := greedy_text(c.rstrip())) is not None)
    item = MCItem("g", "t", (context.rstrip(),) * 2, (text, text + " water"), ("a", "b"), 0)
    (fast,) = score_items(model, tokenizer, [item])
    (reference,) = score_items_reference(model, tokenizer, [item])
    assert fast.is_greedy[0] and reference.is_greedy[0]
    assert fast.is_greedy == reference.is_greedy
