"""GGUF -> ordinary Hugging Face folder (config.json, model.safetensors, tokenizer files), built once and checked.

Storage is float32: dequantised Q4/Q6 weights are an fp16 scale times a small integer (plus an fp16 offset),
which needs up to ~15 mantissa bits, so bf16 would round them. In fp32 the folder holds exactly what
transformers' GGUF loader produces, every tensor is compared bit for bit, and the log-likelihood check
is an exact equality. Users pick bf16 at load time (`paw.models.load_base(dtype=...)`).

The folder is built in a temp folder beside the target, verified there, and renamed into place
(`paw.io.atomic_directory`): a killed conversion never leaves a folder that later loads.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from paw.assets.embedded import CONVERSION_RECORD
from paw.errors import PawError
from paw.io import atomic_directory, atomic_write_json
from paw.models.load import BOS_FAMILIES, quiet_transformers
from paw.progress import track

CHECK_PROMPT = "The capital of France is Paris."
TOKEN_CHECK_TEXT = "Hello world!\nThe capital of France is Paris. 1234 naïve café 東京 <b>"
# A fixed prompt's log-likelihood may differ by float noise only if the two loads ran different kernels;
# both run the same fp32 CPU code, so we expect 0 and allow a hair.
LOG_LIKELIHOOD_TOLERANCE = 1e-4


@contextmanager
def _gguf_progress(desc: str) -> Iterator[None]:
    """Route transformers' GGUF dequantisation loop (a bare tqdm) through paw.progress for the block."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # a transformers version without that loop: nothing to reroute
        yield
        return
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: track(iterable, desc, unit="tensor")
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def prompt_log_likelihood(model: Any, tokenizer: Any, text: str) -> float:
    """Sum of log p(token_i | tokens_<i) over the tokenized `text` (first token, BOS or not, is context)."""
    ids = torch.tensor([tokenizer(text).input_ids], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits.float()
    log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
    return float(log_probs.gather(1, ids[0, 1:, None]).sum())


def _gguf_metadata(gguf: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(gguf)

    def field(key: str, default: Any = None) -> Any:
        return reader.fields[key].contents() if key in reader.fields else default

    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "add_bos_token": bool(field("tokenizer.ggml.add_bos_token", False)),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "has_output_weight": any(t.name == "output.weight" for t in reader.tensors),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return digest.hexdigest()


def _fail(gguf: Path, what: str) -> PawError:
    return PawError(
        f"converting {gguf.name} failed a check: {what}; the GGUF or the installed transformers/gguf versions "
        f"do not produce a faithful HF model; reinstall the assets (`make setup`) and report this if it persists"
    )


def _check_tokenizer(gguf: Path, meta: dict[str, Any], gguf_tok: Any, converted_tok: Any, family: str) -> list[int]:
    """The converted tokenizer gives the GGUF tokenizer's ids, which name the GGUF's own token strings,
    and adds BOS exactly when the GGUF says so; families trained with BOS (Gemma) must add it."""

    ids = gguf_tok(TOKEN_CHECK_TEXT).input_ids
    if converted_tok(TOKEN_CHECK_TEXT).input_ids != ids:
        raise _fail(gguf, "the saved tokenizer gives different token ids from the GGUF tokenizer")
    strings = converted_tok.convert_ids_to_tokens(ids)
    if strings != [meta["tokens"][i] for i in ids]:
        raise _fail(gguf, "token ids do not name the GGUF vocabulary's tokens")
    adds_bos = ids[0] == meta["bos_token_id"]
    if adds_bos != meta["add_bos_token"]:
        raise _fail(gguf, f"tokenizer adds BOS={adds_bos} but the GGUF says add_bos_token={meta['add_bos_token']}")
    if family in BOS_FAMILIES and not adds_bos:
        raise _fail(gguf, f"a {family} tokenizer must add {converted_tok.bos_token} first but does not")
    return ids


def _check_weights(gguf: Path, meta: dict[str, Any], gguf_model: Any, converted: Any) -> int:
    """Every tensor equals the GGUF load's; lm_head is tied to the embeddings exactly when the GGUF has no
    separate output.weight. Returns the number of tensors compared."""
    tied = not meta["has_output_weight"]
    if bool(converted.config.tie_word_embeddings) != tied:
        raise _fail(gguf, f"tie_word_embeddings={converted.config.tie_word_embeddings} but GGUF output.weight "
                          f"{'is missing' if tied else 'is present'}")
    same_storage = converted.lm_head.weight.data_ptr() == converted.get_input_embeddings().weight.data_ptr()
    if same_storage != tied:
        raise _fail(gguf, "lm_head is not tied to the input embeddings as the config says")
    expected = gguf_model.state_dict()
    actual = converted.state_dict()
    if expected.keys() != actual.keys():
        raise _fail(gguf, f"tensor names differ: {sorted(expected.keys() ^ actual.keys())[:3]}")
    for key, tensor in expected.items():
        if not torch.equal(tensor, actual[key]):
            raise _fail(gguf, f"tensor {key} differs after saving")
    return len(expected)


def convert_gguf(gguf: Path, out_dir: Path) -> dict[str, Any]:
    """Convert `gguf` into an HF folder at `out_dir` (replacing it), verify it, and return the record
    that is also written to `out_dir/paw_conversion.json`."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quiet_transformers()
    gguf, out_dir = Path(gguf), Path(out_dir)
    started = time.monotonic()
    meta = _gguf_metadata(gguf)
    with _gguf_progress(f"dequantise {gguf.name}"):
        gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: newer transformers otherwise keep supported architectures in packed GGUF blocks.
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
    gguf_model.eval()
    not_dense = [n for n, p in gguf_model.named_parameters() if p.dtype != torch.float32]
    if not_dense:
        raise _fail(gguf, f"weights {not_dense[:3]} were not dequantised to float32")
    ll_gguf = prompt_log_likelihood(gguf_model, gguf_tok, CHECK_PROMPT)
    # The weights are dense floats now; dropping the GGUF quantizer makes it a plain, saveable checkpoint.
    if getattr(gguf_model, "hf_quantizer", None) is not None:
        gguf_model.hf_quantizer.remove_quantization_config(gguf_model)
    loaded_s = time.monotonic() - started

    with atomic_directory(out_dir) as tmp:
        gguf_model.save_pretrained(tmp)
        gguf_tok.save_pretrained(tmp)
        converted_tok = AutoTokenizer.from_pretrained(tmp)
        converted, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, output_loading_info=True)
        converted.eval()
        if info["missing_keys"] or info["unexpected_keys"]:
            raise _fail(gguf, f"saved folder loads with missing {sorted(info['missing_keys'])[:3]} "
                              f"/ unexpected {sorted(info['unexpected_keys'])[:3]} weights")
        token_ids = _check_tokenizer(gguf, meta, gguf_tok, converted_tok, converted.config.model_type)
        tensors = _check_weights(gguf, meta, gguf_model, converted)
        ll_converted = prompt_log_likelihood(converted, converted_tok, CHECK_PROMPT)
        if abs(ll_converted - ll_gguf) > LOG_LIKELIHOOD_TOLERANCE:
            raise _fail(gguf, f"log-likelihood {ll_converted:.6f} from the folder != {ll_gguf:.6f} from the GGUF")
        record = {
            "gguf_file": gguf.name,
            "gguf_sha256": _sha256(gguf),
            "family": converted.config.model_type,
            "storage_dtype": "float32",
            "tie_word_embeddings": bool(converted.config.tie_word_embeddings),
            "adds_bos": meta["add_bos_token"],
            "bos_token": converted_tok.bos_token,
            "token_check_text": TOKEN_CHECK_TEXT,
            "token_check_ids": token_ids,
            "tensors_compared": tensors,
            "check_prompt": CHECK_PROMPT,
            "log_likelihood_gguf": ll_gguf,
            "log_likelihood_converted": ll_converted,
            "gguf_load_seconds": round(loaded_s, 2),
            "conversion_seconds": round(time.monotonic() - started, 2),
            "transformers_version": transformers.__version__,
            "gguf_version": version("gguf"),
        }
        # Written last: its presence is what marks the folder as prepared.
        atomic_write_json(tmp / CONVERSION_RECORD, record)
        del converted, gguf_model
        gc.collect()
    return record

