"""Tiny random models and tokenizers built from configs, saved as ordinary HF folders.

Tests use these for architectures we cannot download (llama, qwen2, gemma2, gemma3_text, mistral): the real
PAW code runs on them on CPU in seconds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ARCHITECTURES = ("llama", "qwen2", "gemma2", "gemma3_text", "mistral")

_CORPUS = [
    "Question: Which gas do plants take in from the air?\nAnswer: carbon dioxide",
    "Question: What is the boiling point of water at sea level?\nAnswer: 100 degrees Celsius",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "How do you open a jar? Twist the lid counterclockwise until it loosens.",
    "Sarah was a much better surgeon than Maria so Sarah always got the easier cases.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Goal: keep bread fresh. Solution: store it in a sealed bag at room temperature.",
    "0 1 2 3 4 5 6 7 8 9 A B C D E answer yes no true false",
] * 4


@lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def make_tokenizer(vocab_size: int = 400, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (fast, with offsets) trained on a fixed corpus."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    if add_bos:
        from tokenizers import processors

        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.bos_token_id)]
        )
    return tok


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=arch.startswith("gemma"),
    )
    if arch.startswith("gemma"):
        common["head_dim"] = hidden // heads
        common["query_pre_attn_scalar"] = hidden // heads
        common["sliding_window"] = 16
    if arch == "gemma2":
        common["final_logit_softcapping"] = 30.0
        common["attn_logit_softcapping"] = 50.0
    return AutoConfig.for_model(arch, **common)


def make_model_dir(
    root: Path,
    arch: str,
    *,
    vocab_size: int = 400,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Build a random model of `arch`, save it with its tokenizer under `root/<arch>-...`, return the folder."""
    folder = Path(root) / f"{arch}-v{vocab_size}-h{hidden}-l{layers}-a{heads}-kv{kv_heads}-s{seed}"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size, hidden, layers, heads, kv_heads)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger-than-default init so random models give clearly different outputs per input.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    make_tokenizer(vocab_size, add_bos=arch.startswith("gemma")).save_pretrained(folder)
    return folder
