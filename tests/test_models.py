"""paw.models on tiny random models: naming, loading, family quirks, the cache, adapters and their errors."""

from __future__ import annotations

import gc
import json
import shutil
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_tokenizer

from paw.errors import PawError
from paw.models import (
    attached_adapter,
    cached_models,
    is_adapter_dir,
    load_adapter_model,
    load_base,
    read_adapter_base,
    release,
    resolve_model,
)

TEXT = "The capital of France is Paris."
TINY_ARCHS = ("llama", "qwen2", "gemma2", "gemma3_text")


@pytest.fixture(autouse=True)
def empty_cache():
    release()
    yield
    release()


def logits(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    batch = tokenizer([text, "Question: Which gas?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def make_adapter(base_dir: Path, out_dir: Path, base_name: str | None = None, seed: int = 1) -> Path:
    """A LoRA adapter on q_proj/v_proj with random non-zero B (PEFT initialises B to zero, a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's deprecated call into transformers; a base name that is not a folder
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
        peft_model.peft_config["default"].base_model_name_or_path = base_name or str(base_dir)
        peft_model.save_pretrained(out_dir)
    return out_dir


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_load_base_and_adapter_per_family(arch, tiny_model, tmp_path):
    folder = tiny_model(arch)
    loaded = load_base(str(folder), device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.ref.kind == "path" and loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not model.training
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    is_gemma = arch.startswith("gemma")
    assert (model.config._attn_implementation == "eager") == is_gemma
    assert (tokenizer("Paris").input_ids[0] == tokenizer.bos_token_id) == is_gemma

    adapter = make_adapter(folder, tmp_path / "adapter")
    assert is_adapter_dir(adapter) and not is_adapter_dir(folder)
    assert read_adapter_base(adapter) == str(folder)
    before = logits(model, tokenizer)
    with attached_adapter(loaded, adapter) as adapted:
        during = logits(adapted, tokenizer)
    after = logits(model, tokenizer)
    assert torch.equal(before, after), "detaching must restore the cached base exactly"
    assert (during - before).abs().max() > 1e-3, "the adapter must change the logits"
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert load_base(str(folder), device="cpu") is loaded

    # The same adapter on its own fresh base computes what the attached one did.
    standalone = load_adapter_model(adapter, device="cpu")
    assert standalone.adapter == adapter and standalone.model is not model
    torch.testing.assert_close(logits(standalone.model, standalone.tokenizer), during, rtol=0, atol=1e-5)


def test_cache_returns_same_object_and_release_frees_it(tiny_model):
    folder = str(tiny_model("llama"))
    first = load_base(folder, device="cpu")
    assert load_base(folder, device="cpu", dtype="fp32") is first
    bf16 = load_base(folder, device="cpu", dtype="bf16")
    assert bf16 is not first and bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert len(cached_models()) == 2
    model_ref = weakref.ref(first.model)
    del first, bf16
    assert release(folder) == 2 and cached_models() == []
    gc.collect()
    assert model_ref() is None, "release must drop the cache's last reference"
    fresh = load_base(folder, device="cpu")
    assert load_base(folder, device="cpu") is fresh
    assert release() == 1


def test_resolve_model_kinds(tiny_model, tmp_path, paw_home):
    folder = tiny_model("qwen2")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "my-qwen").symlink_to(folder, target_is_directory=True)
    ref = resolve_model("my-qwen", models_dir=models_dir)
    assert ref.kind == "models_dir" and ref.path == folder.resolve()
    assert resolve_model(str(folder)).kind == "path"
    embedded = resolve_model("gemma3-270m")
    assert embedded.kind == "embedded" and embedded.path == paw_home / "models" / "gemma3-270m"
    loaded = load_base("my-qwen", models_dir=models_dir, device="cpu")
    assert loaded.ref.name == "my-qwen" and loaded.family == "qwen2"


def test_bad_model_names_are_one_line_errors(tiny_model, tmp_path):
    with pytest.raises(PawError) as exc:
        resolve_model("no-such-org/no-such-model", models_dir=tmp_path)
    assert_one_line(exc, "not an embedded model", str(tmp_path / "no-such-org/no-such-model"), "HF_HUB_OFFLINE")
    with pytest.raises(PawError) as exc:
        resolve_model("not a model name!")
    assert_one_line(exc, "not a valid hub id")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PawError) as exc:
        load_base(str(tmp_path / "empty"))
    assert_one_line(exc, "no config.json")
    with pytest.raises(PawError) as exc:
        load_base(str(tiny_model("llama")), dtype="int3")
    assert_one_line(exc, "dtype 'int3'", "bf16")
    adapter = make_adapter(tiny_model("llama"), tmp_path / "adapter")
    with pytest.raises(PawError) as exc:
        load_base(str(adapter))
    assert_one_line(exc, "is a LoRA adapter")


def test_gemma_gets_bos_even_if_its_tokenizer_forgets(tiny_model, tmp_path):
    folder = tmp_path / "gemma-no-bos"
    shutil.copytree(tiny_model("gemma3_text"), folder)
    make_tokenizer(400, add_bos=False).save_pretrained(folder)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder)("Paris").input_ids[0] != 1
    loaded = load_base(str(folder), device="cpu")
    assert loaded.tokenizer("Paris").input_ids[0] == loaded.tokenizer.bos_token_id == 1


def test_missing_untied_lm_head_is_an_error(tiny_model, tmp_path):
    folder = tmp_path / "llama-no-head"
    shutil.copytree(tiny_model("llama"), folder)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PawError) as exc:
        load_base(str(folder))
    assert_one_line(exc, "lm_head.weight", "tie_word_embeddings")


def test_broken_adapter_folders(tiny_model, tmp_path):
    good = make_adapter(tiny_model("llama"), tmp_path / "good")
    loaded = load_base(str(tiny_model("llama")), device="cpu")

    def broken(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(good, target)
        return target

    cases = []
    missing_config = broken("missing-config")
    (missing_config / "adapter_config.json").unlink()
    cases.append((missing_config, "has no adapter_config.json"))
    bad_json = broken("bad-json")
    (bad_json / "adapter_config.json").write_text("{not json", encoding="utf-8")
    cases.append((bad_json, "not valid JSON"))
    not_lora = broken("not-lora")
    config = json.loads((not_lora / "adapter_config.json").read_text())
    config["peft_type"] = "PREFIX_TUNING"
    (not_lora / "adapter_config.json").write_text(json.dumps(config))
    cases.append((not_lora, "only LORA"))
    no_weights = broken("no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    cases.append((no_weights, "has no adapter_model.safetensors"))
    truncated = broken("truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    cases.append((truncated, "cannot be read"))
    cases.append((tmp_path / "nowhere", "does not exist"))

    before = logits(loaded.model, loaded.tokenizer)
    for folder, fragment in cases:
        with pytest.raises(PawError) as exc:
            load_adapter_model(folder, device="cpu")
        assert_one_line(exc, fragment, str(folder))
        with pytest.raises(PawError) as exc:
            with attached_adapter(loaded, folder):
                pass
        assert_one_line(exc, fragment)
    assert torch.equal(before, logits(loaded.model, loaded.tokenizer))


def test_adapter_on_a_base_that_does_not_fit(tiny_model, tmp_path):
    small, wide = tiny_model("llama"), tiny_model("llama", hidden=96)
    adapter = make_adapter(small, tmp_path / "adapter")
    with pytest.raises(PawError) as exc:
        load_adapter_model(adapter, base_model_path=str(wide), device="cpu")
    assert_one_line(exc, str(adapter), str(wide), "in_features=96", "has 64")

    wide_loaded = load_base(str(wide), device="cpu")
    before = logits(wide_loaded.model, wide_loaded.tokenizer)
    with pytest.raises(PawError) as exc:
        with attached_adapter(wide_loaded, adapter):
            pass
    assert_one_line(exc, str(adapter), str(wide))
    assert torch.equal(before, logits(wide_loaded.model, wide_loaded.tokenizer))

    orphan = make_adapter(small, tmp_path / "orphan", base_name=str(tmp_path / "deleted-base"))
    with pytest.raises(PawError) as exc:
        load_adapter_model(orphan, device="cpu")
    assert_one_line(exc, str(orphan), str(tmp_path / "deleted-base"), "base_model_path")


def test_nested_attach_is_refused(tiny_model, tmp_path):
    folder = tiny_model("llama")
    adapter = make_adapter(folder, tmp_path / "adapter")
    loaded = load_base(str(folder), device="cpu")
    with attached_adapter(loaded, adapter):
        with pytest.raises(PawError) as exc:
            with attached_adapter(loaded, adapter):
                pass
        assert_one_line(exc, "already carries an adapter")
    with attached_adapter(loaded, adapter):  # usable again after leaving the block
        pass


def test_adapter_on_a_bf16_base_changes_and_restores_it(tiny_model, tmp_path):
    folder = tiny_model("gemma3_text")
    adapter = make_adapter(folder, tmp_path / "adapter")
    loaded = load_base(str(folder), device="cpu", dtype="bf16")
    before = logits(loaded.model, loaded.tokenizer)
    with attached_adapter(loaded, adapter) as adapted:
        during = logits(adapted, loaded.tokenizer)
    assert torch.equal(before, logits(loaded.model, loaded.tokenizer))
    assert (during.float() - before.float()).abs().max() > 1e-2
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


def test_pad_token_falls_back_to_eos(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "llama-no-pad"
    shutil.copytree(tiny_model("llama"), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    loaded = load_base(str(folder), device="cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<eos>"
    batch = loaded.tokenizer(["a", "a longer text"], padding=True)
    assert batch.input_ids[0][-1] == loaded.tokenizer.eos_token_id and batch.attention_mask[0][-1] == 0
