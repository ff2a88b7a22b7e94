"""The real embedded models: convert (once per PAW_HOME), load through paw.models, check tokens and one fact.

Run with `pytest -m embedded -s tests/test_models_embedded.py` (prints timings and log-likelihoods).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from gguf import GGUFReader

from paw.assets.convert import CONVERSION_RECORD, LOG_LIKELIHOOD_TOLERANCE, TOKEN_CHECK_TEXT
from paw.assets.embedded import embedded_models, gguf_path, prepare_model
from paw.models import load_base, release
from paw.resources import current_rss_bytes

pytestmark = pytest.mark.embedded

# Ids the GGUF's own tokenizer gives (Gemma's match the official Gemma 3 tokenizer, <bos>=2 first).
EXPECTED_IDS = {
    "smollm2-135m": [504, 3575, 282, 4649, 314],
    "gemma3-270m": [2, 818, 5279, 529, 7001, 563],
}
CONTEXT = "The capital of France is"


def continuation_log_likelihood(loaded, context: str, continuation: str) -> float:
    tokenizer, model = loaded.tokenizer, loaded.model
    context_ids = tokenizer(context).input_ids
    full_ids = tokenizer(context + continuation).input_ids
    assert full_ids[: len(context_ids)] == context_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, len(context_ids):]
    return float(log_probs[len(context_ids) - 1:].gather(1, targets[:, None]).sum())


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_embedded_model_converts_loads_and_knows_paris(name):
    started = time.monotonic()
    folder = prepare_model(name)
    prepare_s = time.monotonic() - started
    assert {m.name: m.prepared for m in embedded_models()}[name]
    record = json.loads((folder / CONVERSION_RECORD).read_text())
    assert abs(record["log_likelihood_gguf"] - record["log_likelihood_converted"]) <= LOG_LIKELIHOOD_TOLERANCE
    assert record["tie_word_embeddings"] is True  # neither GGUF has a separate output.weight

    release()
    started = time.monotonic()
    loaded = load_base(name, device="cpu", dtype="float32")
    load_s = time.monotonic() - started
    tokenizer = loaded.tokenizer
    assert tokenizer(CONTEXT).input_ids == EXPECTED_IDS[name]
    assert tokenizer(TOKEN_CHECK_TEXT).input_ids == record["token_check_ids"]
    vocab = GGUFReader(gguf_path(name)).fields["tokenizer.ggml.tokens"].contents()
    ids = record["token_check_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [vocab[i] for i in ids]
    if name == "gemma3-270m":
        assert loaded.model.config._attn_implementation == "eager"
        assert tokenizer(CONTEXT).input_ids[0] == tokenizer.bos_token_id == 2
    else:
        assert tokenizer.bos_token_id not in tokenizer(CONTEXT).input_ids  # SmolLM2 is used without BOS
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.get_input_embeddings().weight.data_ptr()

    paris = continuation_log_likelihood(loaded, CONTEXT, " Paris")
    banana = continuation_log_likelihood(loaded, CONTEXT, " banana")
    print(f"\n{name}: prepare {prepare_s:.1f}s (conversion record: {record['conversion_seconds']}s), "
          f"load {load_s:.1f}s, rss {current_rss_bytes() / 2**20:.0f} MiB, "
          f"ll(' Paris')={paris:.3f} ll(' banana')={banana:.3f}, "
          f"check prompt ll gguf={record['log_likelihood_gguf']:.6f} "
          f"converted={record['log_likelihood_converted']:.6f}")
    assert paris > banana + 2.0
    release(name)
