"""paw.transfer on tiny random models: adapter I/O, every method end to end, exact-recovery cases, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from tiny import _CORPUS
from transformers import AutoModelForCausalLM, AutoTokenizer

from paw.errors import PawError
from paw.tasks import MCItem
from paw.transfer import format_report_table, transfer_adapter
from paw.transfer.adapter_io import read_adapter
from paw.transfer.weight_methods import index_similarity, module_similarity

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HELD_OUT = ["Which gas do plants take in? The capital of Italy is Rome and water boils at 100 degrees."]


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def make_adapter(base_dir: Path, out: Path, modules: list[str], *, r: int = 4, alpha: float = 8, seed: int = 1, **kw) -> Path:
    """A source LoRA with random nonzero A and B (a trained adapter's stand-in), saved as PEFT does."""
    model = get_peft_model(load(base_dir)[0], LoraConfig(r=r, lora_alpha=alpha, target_modules=modules, **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def calibration_texts(count: int = 16, words: int = 40) -> list[str]:
    rng = random.Random(0)
    vocab = " ".join(_CORPUS).split()
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(count)]


def logits(model, tokenizer, adapter: Path | None = None) -> torch.Tensor:
    ids = tokenizer(HELD_OUT, return_tensors="pt")
    with torch.no_grad():
        if adapter is None:
            return model(**ids).logits
        peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
        try:
            return peft_model(**ids).logits
        finally:
            peft_model.unload()  # leave the shared base as it was


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def source_dir(tiny_model) -> Path:
    return tiny_model("llama", kv_heads=4)


@pytest.fixture(scope="module")
def source(source_dir):
    return load(source_dir)


@pytest.fixture(scope="module")
def adapter(source_dir, tmp_path_factory) -> Path:
    return make_adapter(source_dir, tmp_path_factory.mktemp("src") / "lora", ALL_MODULES)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return calibration_texts()


def test_read_adapter_matches_peft_merge_for_rslora_and_alpha_pattern(source_dir, tmp_path):
    path = make_adapter(source_dir, tmp_path / "lora", ["q_proj", "v_proj"], r=8, alpha=16, use_rslora=True,
                        alpha_pattern={"v_proj": 4})
    read = read_adapter(path)
    base = load(source_dir)[0]
    before = {n: base.get_submodule(n).weight.detach().clone() for n in read.modules}
    merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    for name, module in read.modules.items():
        assert rel_error(module.delta(), merged.get_submodule(name).weight.detach() - before[name]) < 1e-5


@pytest.mark.parametrize("method", ["copy", "lora-x", "paw"])
def test_same_model_reproduces_source_update(method, source, source_dir, tmp_path, texts):
    # lora-x projects onto the target weight's singular bases; with all of them (square modules) nothing is lost.
    modules = ["q_proj", "o_proj"] if method == "lora-x" else ALL_MODULES
    src = make_adapter(source_dir, tmp_path / "lora", modules)
    result = transfer_adapter(src, source_model=source, target_model=source, method=method,
                              output_dir=tmp_path / "out", calibration_texts=texts[:8])
    before, after = read_adapter(src), read_adapter(tmp_path / "out")
    assert set(after.modules) == set(before.modules)
    worst = max(rel_error(after.modules[n].delta(), m.delta()) for n, m in before.modules.items())
    assert worst < 1e-4, worst
    assert all(row["similarity"] == pytest.approx(1.0) for row in result.report["modules"])


def _permuted_copy(model_dir: Path, seed: int = 5):
    """The same function with its hidden basis permuted: embedding columns, norm weights, every weight's hidden
    input columns / hidden output rows (RMSNorm commutes with a permutation, so this is exact)."""
    model, tokenizer = load(model_dir)
    perm = torch.randperm(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(param[perm])
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                param.copy_(param[perm])
            else:
                param.copy_(param[:, perm])
    return model, tokenizer


def test_paw_recovers_permuted_hidden_basis(source, source_dir, adapter, tmp_path, texts):
    target = _permuted_copy(source_dir)
    base = logits(*source)
    assert rel_error(logits(*target), base) < 1e-5  # the reparametrisation is exact
    wanted = logits(*source, adapter)
    shift = (wanted - base).norm()
    residual, agreement, scales = {}, {}, {}
    for method in ("paw", "copy"):
        out = tmp_path / method
        result = transfer_adapter(adapter, source_model=source, target_model=target, method=method, output_dir=out,
                                  calibration_texts=texts)
        residual[method] = float((logits(*target, out) - wanted).norm() / shift)
        agreement[method] = result.report["shift_agreement"]["cosine"]
        scales[method] = result.report["scale_fit"].get("scale")
    print(f"permuted basis: logit residual {residual}, held-out shift agreement {agreement}")
    assert residual["paw"] < 0.05 and agreement["paw"] > 0.99, (residual, agreement)
    assert scales["paw"] == pytest.approx(1.0, abs=0.05)  # the fitted scale keeps an exact transfer as it is
    # the control: copying into a permuted basis is a random perturbation
    assert residual["copy"] > 0.5 and agreement["copy"] < 0.5, (residual, agreement)


# Cross-width and cross-vocabulary run in the every-method test below.
PAIRS = {
    "cross-depth": dict(layers=6, kv_heads=4, seed=1),
    "gqa": dict(heads=8, kv_heads=2, seed=2),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_paw_runs_across_shapes(pair, tiny_model, source, adapter, tmp_path, texts):
    target = load(tiny_model("llama", **PAIRS[pair]))
    result = transfer_adapter(adapter, source_model=source, target_model=target, method="paw",
                              output_dir=tmp_path / "out", calibration_texts=texts)
    report = json.loads((tmp_path / "out" / "transfer_report.json").read_text())
    assert report["transferred"] == result.report["transferred"] and len(report["transferred"]) > 0
    layer_map = [j for _, j in report["layer_map"]]
    assert layer_map == sorted(set(layer_map))  # order-preserving, one target layer per source layer
    # Unrelated random bases: the scale that best moves the target as the source moved may well be 0 (no harm).
    fit = report["scale_fit"]
    assert 0.0 <= fit["scale"] <= 4.0 and fit["kl_at_scale"] <= fit["kl_at_zero"]
    assert (rel_error(logits(*target, tmp_path / "out"), logits(*target)) > 1e-3) == (fit["scale"] > 0)


@pytest.fixture(scope="module")
def wide_target(tiny_model):
    """Another family, width and vocabulary: qwen2, hidden 96, 300 tokens (the source is llama, 64, 400)."""
    return load(tiny_model("qwen2", vocab_size=300, hidden=96, kv_heads=2, seed=3))


@pytest.mark.parametrize("method", ["copy", "lora-x", "cross-lora", "paw", "random"])
def test_every_method_loads_on_a_wider_other_vocab_target(method, wide_target, source, adapter, tmp_path, texts):
    target = wide_target
    result = transfer_adapter(adapter, source_model=source, target_model=target, method=method,
                              output_dir=tmp_path / "out", calibration_texts=texts, rank=2, fit_scale=False)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["base_model_name_or_path"] == result.report["target_model"]
    assert rel_error(logits(*target, tmp_path / "out"), logits(*target)) > 1e-3
    table = format_report_table(result.report)
    lines = table.splitlines()
    rows = [line.split()[0] for line in lines[next(i for i, line in enumerate(lines) if line.startswith("module")) + 1 :]]
    assert sorted(row.split(".")[-1] for row in rows) == sorted(ALL_MODULES)


def test_output_rank_keeps_the_best_truncation(source, source_dir, tmp_path):
    src = make_adapter(source_dir, tmp_path / "lora", ["q_proj"], r=8, alpha=16, use_rslora=True)
    transfer_adapter(src, source_model=source, target_model=source, method="copy", output_dir=tmp_path / "out", rank=3)
    before, after = read_adapter(src), read_adapter(tmp_path / "out")
    for name, module in before.modules.items():
        u, s, vh = torch.linalg.svd(module.delta())
        best = (u[:, :3] * s[:3]) @ vh[:3]
        assert rel_error(after.modules[name].delta(), best) < 1e-5


def test_similarity_is_one_for_a_module_with_itself_and_low_for_unrelated(source, tiny_model):
    weight = source[0].get_submodule("model.layers.0.self_attn.q_proj").weight
    other = load(tiny_model("llama", kv_heads=4, seed=7))[0].get_submodule("model.layers.0.self_attn.q_proj").weight
    identity = lambda x: x  # noqa: E731
    assert index_similarity(weight, weight) == pytest.approx(1.0)
    assert module_similarity(weight, weight, identity, identity) == pytest.approx(1.0)
    assert index_similarity(weight, other) < 0.5  # random 16-dim subspaces of R^64 overlap ~0.25


def test_threshold_skips_dissimilar_modules(source, tiny_model, adapter, tmp_path):
    target = load(tiny_model("llama", kv_heads=4, seed=7))
    sims = [r["similarity"] for r in transfer_adapter(adapter, source_model=source, target_model=target, method="copy",
                                                      output_dir=tmp_path / "all").report["modules"]]
    threshold = sorted(sims)[len(sims) // 2]
    result = transfer_adapter(adapter, source_model=source, target_model=target, method="copy",
                              output_dir=tmp_path / "half", similarity_threshold=threshold)
    kept = {r["target"] for r in result.report["modules"] if r["similarity"] >= threshold}
    assert set(result.transferred) == kept and 0 < len(kept) < len(sims)
    assert set(read_adapter(tmp_path / "half").modules) == kept
    with pytest.raises(PawError, match="no module passed"):
        transfer_adapter(adapter, source_model=source, target_model=target, method="copy",
                         output_dir=tmp_path / "none", similarity_threshold=1.0)
    assert not (tmp_path / "none").exists()


def test_distillation_lowers_teacher_student_kl(tiny_model, source, adapter, tmp_path, texts):
    target = load(tiny_model("llama", hidden=96, kv_heads=4))
    result = transfer_adapter(adapter, source_model=source, target_model=target, method="paw", output_dir=tmp_path / "out",
                              calibration_texts=texts[:4], distill_steps=6)
    losses = result.report["distill_kl"]
    assert result.report["distill_over"] == "next tokens" and losses[-1] < losses[0]


def test_distillation_over_answer_options_of_items(tiny_model, source, adapter, tmp_path):
    item = MCItem(id="0", task="toy", contexts=("Question: Which city is the capital of France?\nAnswer:",) * 3,
                  continuations=(" Paris", " Rome", " the sea"), choices=("Paris", "Rome", "the sea"), gold=0)
    target = load(tiny_model("llama", hidden=96, kv_heads=4))
    result = transfer_adapter(adapter, source_model=source, target_model=target, method="copy",
                              output_dir=tmp_path / "out", calibration_items=[item], distill_steps=8)
    losses = result.report["distill_kl"]  # one item: every step sees the same options
    assert result.report["distill_over"] == "answer options" and sum(losses[4:]) / 4 < losses[0] / 2, losses


def test_bad_inputs_raise_one_line_errors_and_write_nothing(tiny_model, source, source_dir, adapter, tmp_path):
    out = tmp_path / "out"
    wider = load(tiny_model("llama", hidden=96, kv_heads=4))
    with pytest.raises(PawError, match="does not fit source model") as error:
        transfer_adapter(adapter, source_model=wider, target_model=source, method="copy", output_dir=out)
    assert "\n" not in str(error.value)

    renamed, tokenizer = load(source_dir)
    for layer in renamed.model.layers:
        layer.mlp.fc_in = layer.mlp.gate_proj
        del layer.mlp.gate_proj
    with pytest.raises(PawError, match="has no linear module"):
        transfer_adapter(adapter, source_model=source, target_model=(renamed, tokenizer), method="copy", output_dir=out)

    dora = make_adapter(source_dir, tmp_path / "dora", ["q_proj"], use_dora=True)
    with pytest.raises(PawError, match="DoRA"):
        transfer_adapter(dora, source_model=source, target_model=source, method="copy", output_dir=out)

    ia3 = tmp_path / "ia3"
    get_peft_model(load(source_dir)[0], IA3Config(target_modules=["k_proj", "down_proj"],
                                                  feedforward_modules=["down_proj"])).save_pretrained(ia3)
    with pytest.raises(PawError, match="only LoRA"):
        transfer_adapter(ia3, source_model=source, target_model=source, method="copy", output_dir=out)

    with pytest.raises(PawError, match="calibration"):
        transfer_adapter(adapter, source_model=source, target_model=source, method="paw", output_dir=out)
    assert not out.exists()


def test_cli_transfers_by_model_path_and_prints_the_table(source_dir, adapter, tmp_path, capsys):
    from paw.cli import main

    calibration = tmp_path / "prompts.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in calibration_texts(4, 30)))
    out = tmp_path / "out"
    code = main(["transfer", "--source-adapter", str(adapter), "--source-model", str(source_dir), "--target-model",
                 str(source_dir), "--method", "paw", "--output-dir", str(out), "--calibration-file", str(calibration),
                 "--rank", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and "self_attn.q_proj" in printed and "28 modules" in printed
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    assert main(["transfer", "--source-adapter", str(tmp_path / "missing"), "--source-model", str(source_dir),
                 "--target-model", str(source_dir), "--output-dir", str(tmp_path / "x")]) == 2


def test_paw_truncation_is_weighted_by_the_inputs_the_module_sees(source, adapter, tmp_path, texts):
    calibration = texts[:6]
    transfer_adapter(adapter, source_model=source, target_model=source, method="paw", output_dir=tmp_path / "out",
                     calibration_texts=calibration, rank=2, fit_scale=False)
    model, tokenizer = source
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda _m, args, _o, name=name: inputs.setdefault(name, []).append(args[0][0])) for name in read_adapter(adapter).modules]
    with torch.no_grad():
        for text in calibration:
            model(**tokenizer(text, return_tensors="pt"))
    for hook in hooks:
        hook.remove()
    before, after = read_adapter(adapter), read_adapter(tmp_path / "out")
    for name, module in before.modules.items():
        x = torch.cat(inputs[name])
        u, s, vh = torch.linalg.svd(module.delta())
        plain = (u[:, :2] * s[:2]) @ vh[:2]
        weighted_error = (x @ (after.modules[name].delta() - module.delta()).T).norm()
        assert weighted_error <= (x @ (plain - module.delta()).T).norm() * 1.001, name


def test_layer_maps_preserve_order_for_deeper_and_shallower_targets():
    from paw.transfer.layer_map import monotone_layer_map, relative_depth_map

    assert relative_depth_map(4, 6) == [0, 2, 3, 5] and relative_depth_map(6, 4) == [0, 1, 1, 2, 2, 3]
    # similarity peaked on a known monotone path; the DP must find it exactly
    deeper = torch.full((4, 6), 0.1)
    for i, j in enumerate([0, 1, 4, 5]):
        deeper[i, j] = 1.0
    assert monotone_layer_map(deeper) == [0, 1, 4, 5]
    shallower = torch.full((6, 4), 0.1)
    for i, j in enumerate([0, 0, 1, 3, 3, 3]):
        shallower[i, j] = 1.0
    assert monotone_layer_map(shallower) == [0, 0, 1, 3, 3, 3]
    # a strictly increasing map is kept even when similarity pulls two layers onto one target layer
    crowded = torch.full((3, 3), 0.0)
    crowded[:, 1] = 1.0
    assert monotone_layer_map(crowded) == [0, 1, 2]


def test_positions_pair_tokens_that_end_at_the_same_character(source, wide_target):
    from paw.transfer.calibration import aligned_positions

    text = "Goal: keep bread fresh. Solution: store it in a sealed bag at room temperature."
    enc_s = source[1](text, return_offsets_mapping=True)
    enc_t = wide_target[1](text, return_offsets_mapping=True)
    pairs = aligned_positions(enc_s["offset_mapping"], enc_t["offset_mapping"])
    assert len(enc_s["input_ids"]) != len(enc_t["input_ids"]) and len(pairs) > 5  # different cuts, many shared ends
    for i, j in pairs:
        assert enc_s["offset_mapping"][i][1] == enc_t["offset_mapping"][j][1]
    assert pairs[-1] == (len(enc_s["input_ids"]) - 1, len(enc_t["input_ids"]) - 1)  # both have read the whole text


def test_random_control_keeps_each_module_norm_and_is_seeded(source, wide_target, adapter, tmp_path):
    runs = [transfer_adapter(adapter, source_model=source, target_model=wide_target, method="random",
                             output_dir=tmp_path / f"out{i}") for i in range(2)]
    moved, again = read_adapter(tmp_path / "out0"), read_adapter(tmp_path / "out1")
    for row in runs[0].report["modules"]:
        assert row["delta_norm_written"] == pytest.approx(row["delta_norm_source"], rel=1e-4)
        assert torch.equal(moved.modules[row["target"]].delta(), again.modules[row["target"]].delta())
    # unrelated to the source update: near-orthogonal in the (equal-shaped) same-model case
    same = transfer_adapter(adapter, source_model=source, target_model=source, method="random", output_dir=tmp_path / "same")
    before, after = read_adapter(adapter), read_adapter(tmp_path / "same")
    name = same.report["transferred"][0]
    cosine = torch.nn.functional.cosine_similarity(before.modules[name].delta().flatten(), after.modules[name].delta().flatten(), dim=0)
    assert abs(float(cosine)) < 0.2


def test_module_selection_and_layer_map_choice(source, wide_target, adapter, tmp_path, texts):
    result = transfer_adapter(adapter, source_model=source, target_model=wide_target, method="paw", modules=["q_proj", "v_proj"],
                              layer_map="depth", output_dir=tmp_path / "out", calibration_texts=texts)
    assert {name.rsplit(".", 1)[-1] for name in result.report["transferred"]} == {"q_proj", "v_proj"}
    assert result.report["layer_map_by"] == "depth" and result.report["layer_cka"] is None
    assert any(row["reason"] == "not among the selected modules" for row in result.report["modules"])
    with pytest.raises(PawError, match="none of modules lm_head is adapted"):
        transfer_adapter(adapter, source_model=source, target_model=wide_target, modules=["lm_head"],
                         output_dir=tmp_path / "bad", calibration_texts=texts)
    with pytest.raises(PawError, match="unknown layer map 'middle'; valid: cka, depth"):
        transfer_adapter(adapter, source_model=source, target_model=wide_target, layer_map="middle",
                         output_dir=tmp_path / "bad", calibration_texts=texts)
    assert not (tmp_path / "bad").exists()


def test_shift_distillation_moves_the_target_base_by_the_source_change_only(source, source_dir, wide_target, tmp_path):
    # PEFT's own initialisation (B = 0) changes nothing: the "shift" target is then the target base itself (KL 0
    # from the first step), while "teacher" asks the target to imitate the other model.
    unchanged = get_peft_model(load(source_dir)[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    unchanged.save_pretrained(tmp_path / "zero")
    item = MCItem(id="0", task="toy", contexts=("Question: what is red?\nAnswer:",) * 2, continuations=(" apple", " sky"),
                  choices=("apple", "sky"), gold=0)
    kl = {}
    for objective in ("shift", "teacher"):
        result = transfer_adapter(tmp_path / "zero", source_model=source, target_model=wide_target, method="copy",
                                  output_dir=tmp_path / objective, calibration_items=[item], distill_steps=2,
                                  distill_objective=objective)
        assert result.report["distill_objective"] == objective
        kl[objective] = result.report["distill_kl"][0]
    assert kl["shift"] < 1e-9 and kl["teacher"] > 1e-7, kl  # tiny random models: near-uniform options
