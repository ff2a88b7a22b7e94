"""paw.train on tiny random models (CPU, seconds): training, saving, reloading, reuse, resume, safety, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from paw.cli import build_parser
from paw.errors import PawError
from paw.evaluate.scoring import encode_requests
from paw.models import load_base
from paw.tasks.items import MCItem
from paw.train import PRESETS, TrainConfig, train_lora
from paw.train.checkpoint import join_tensors, split_tensors
from paw.train.command import config_from_args
from paw.train.config import lora_settings, resolve_target_modules
from paw.train.data import IGNORE_INDEX, GoldDataset, PlannedBatches, training_example

QUESTIONS = [
    "Which gas do plants take in from the air?",
    "What is the boiling point of water at sea level?",
    "What is the capital of France?",
    "How do you open a jar?",
]
ANSWERS = [" carbon dioxide", " 100 degrees Celsius", " Paris", " Twist the lid"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine spinning threads slow everyone down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixture_items(n: int = 24, task: str = "fixture") -> list[MCItem]:
    """Questions whose gold answer always follows the question, at alternating choice positions."""
    items = []
    for i in range(n):
        q = i % len(QUESTIONS)
        right, wrong = ANSWERS[q], ANSWERS[(q + 1) % len(ANSWERS)]
        gold = i % 2
        continuations = (right, wrong) if gold == 0 else (wrong, right)
        items.append(MCItem(id=f"{task}-{i}", task=task, contexts=(f"Question: {QUESTIONS[q]}\nAnswer:",) * 2,
                            continuations=continuations, choices=tuple(c.strip() for c in continuations), gold=gold))
    return items


def config_for(model_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), datasets=["fixture"], batch_size=4, max_steps=8, lr=3e-3, warmup_ratio=0.0,
                  output_dir=str(out), checkpoint_every_n_steps=0, swanlab_mode="disabled", lora_dropout=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


class CaptureLogits(L.Callback):
    """The trained in-memory model's logits on fixed inputs, taken when training ends."""

    def __init__(self, input_ids: torch.Tensor) -> None:
        self.input_ids = input_ids
        self.logits: torch.Tensor | None = None
        self.trainable: list[str] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainable = [name for name, param in pl_module.named_parameters() if param.requires_grad]
        pl_module.model.eval()
        with torch.no_grad():
            self.logits = pl_module.model(input_ids=self.input_ids.to(pl_module.device)).logits.cpu()


class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


def test_presets_and_explicit_overrides() -> None:
    assert lora_settings(TrainConfig(model="m")).target_modules == ("q_proj", "v_proj")
    full = lora_settings(TrainConfig(model="m", preset="full"))
    assert (full.r, full.lora_alpha, full.target_modules) == (32, 64, tuple(PRESETS["full"]["target_modules"]))
    mixed = lora_settings(TrainConfig(model="m", preset="standard", r=8, target_modules=["q_proj"]))
    assert (mixed.r, mixed.lora_alpha, mixed.target_modules) == (8, 32, ("q_proj",))
    with pytest.raises(PawError, match="unknown LoRA preset"):
        TrainConfig(model="m", preset="huge").validate()


def test_target_modules_are_checked_against_the_model(tiny_model) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    neox = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gpt_neox", vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(PawError, match="query_key_value") as error:
        resolve_target_modules(neox, ("q_proj", "v_proj"))
    assert "\n" not in str(error.value)
    assert resolve_target_modules(neox, ("query_key_value",)) == ["query_key_value"]
    llama = load_base(str(tiny_model("llama"))).model
    assert resolve_target_modules(llama, tuple(PRESETS["full"]["target_modules"]))
    with pytest.raises(PawError, match="no module named q_prj"):
        resolve_target_modules(llama, ("q_prj",))


def test_training_example_is_scored_like_the_evaluator(tiny_model) -> None:
    tokenizer = load_base(str(tiny_model("gemma2"))).tokenizer
    item = MCItem(id="x", task="t", contexts=("Question: What is the capital of France?\nAnswer: ",) * 2,
                  continuations=("Paris", "Rome"), choices=("Paris", "Rome"), gold=0)
    example = training_example(tokenizer, item, max_length=64)
    answer = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert answer == example["labels"][-len(answer):]
    assert answer == encode_requests(tokenizer, [item], 64)[0][0].targets
    assert tokenizer.decode(answer) == " Paris"  # the prompt's trailing space moved to the answer
    assert example["input_ids"][0] == tokenizer.bos_token_id  # gemma: BOS first, as lm-eval scores it
    short = training_example(tokenizer, item, max_length=6)
    assert len(short["input_ids"]) == 7 and short["input_ids"][-len(answer):] == answer  # left-truncated prompt
    long_answer = MCItem(id="y", task="t", contexts=("Question: Why?\nAnswer:",) * 2,
                         continuations=(" because" * 40, " no"), choices=("because", "no"), gold=0)
    with pytest.raises(PawError, match=r"continuation has \d+ tokens, more than the model.s maximum length 16"):
        encode_requests(tokenizer, [long_answer], 16)  # the evaluator cannot score it whole
    cut = training_example(tokenizer, long_answer, max_length=16)
    kept = [t for t, label in zip(cut["input_ids"], cut["labels"]) if label != IGNORE_INDEX]
    assert len(cut["input_ids"]) == 17 and kept == encode_requests(tokenizer, [long_answer], 512)[0][0].targets[:16]


def test_training_data_warns_once_about_truncated_examples(tiny_model, caplog) -> None:
    tokenizer = load_base(str(tiny_model("gemma2"))).tokenizer
    long_answer = MCItem(id="y", task="t", contexts=("Question: Why?\nAnswer:",) * 2,
                         continuations=(" because" * 40, " no"), choices=("because", "no"), gold=0)
    dataset = GoldDataset([long_answer] * 3, tokenizer, max_length=16)
    with caplog.at_level(logging.WARNING, logger="paw"):
        examples = [dataset[i] for i in range(3)]
    assert all(len(example["input_ids"]) == 17 for example in examples)
    assert [r.getMessage() for r in caplog.records] == [
        "training examples reach max_length 16 tokens (first: 'y' of t) and longer ones are truncated; "
        "raise --max_length to train on them whole"]


def test_planned_batches_resume_and_shard_the_same_order() -> None:
    full = list(PlannedBatches(10, 3, num_batches=8, seed=1))
    assert list(PlannedBatches(10, 3, num_batches=8, seed=1, start_batch=5)) == full[5:]
    assert sorted(sum(full[:4], [])[:10]) == list(range(10))  # a pass covers every example once
    assert list(PlannedBatches(10, 3, num_batches=8, seed=2)) != full
    rank0 = list(PlannedBatches(10, 3, num_batches=4, seed=1, rank=0, world_size=2))
    rank1 = list(PlannedBatches(10, 3, num_batches=4, seed=1, rank=1, world_size=2))
    assert [a + b for a, b in zip(rank0, rank1)] == [x + y for x, y in zip(full[0::2], full[1::2])][:4]


def test_checkpoint_tree_round_trips_optimizer_state() -> None:
    param = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones_like(param)
    optimizer.step()
    tree = {"optimizer_states": [optimizer.state_dict()], "loops": {"step": 3, "pair": (1, "a")}, "none": None}
    tensors: dict[str, torch.Tensor] = {}
    restored = join_tensors(json.loads(json.dumps(split_tensors(tree, tensors))), tensors)
    state = restored["optimizer_states"][0]
    assert list(state["state"]) == [0]
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(state["state"][0][key], value)
    assert restored["loops"] == {"step": 3, "pair": (1, "a")} and restored["none"] is None
    with pytest.raises(TypeError, match="without pickle"):
        split_tensors({"bad": object()}, {})


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3_text"])
def test_training_lowers_loss_and_the_saved_adapter_reloads(arch: str, tiny_model, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(arch)
    loaded = load_base(str(model_dir))
    probe = loaded.tokenizer(["Question: What is the capital of France?\nAnswer: Paris"], return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = loaded.model(input_ids=probe).logits
    capture = CaptureLogits(probe)

    result = train_lora(config_for(model_dir, tmp_path, preset="full"), model=loaded,
                        items={"fixture": fixture_items()}, callbacks=[capture])

    seen = losses(result.run_dir)
    assert result.steps == 8 and len(seen) == 8
    assert sum(seen[-2:]) < 0.8 * sum(seen[:2])
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert len(weights) == 4 * 7 * 2  # layers x (q, k, v, o, gate, up, down) x (lora_A, lora_B), nothing else
    assert all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert len(capture.trainable) == len(weights) and all(".lora_" in name for name in capture.trainable)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir)
    info = json.loads((result.adapter_dir / "paw_run.json").read_text())
    assert info["steps"] == 8 and info["tokens"] > 0 and info["tokens_per_s"] > 0 and info["data"]["hash"]

    fresh = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(fresh, result.adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe).logits, capture.logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(capture.logits, base_logits, atol=1e-3)
        # The cached base is back as it was: no LoRA layers, same outputs, eval mode.
        torch.testing.assert_close(loaded.model(input_ids=probe).logits, base_logits)
    assert not loaded.model.training and not any("lora" in name for name, _ in loaded.model.named_modules())


def test_identical_run_is_reused_and_force_retrains(tiny_model, tmp_path: Path, caplog, monkeypatch) -> None:
    model_dir = tiny_model("llama")
    loaded = load_base(str(model_dir))
    items = {"fixture": fixture_items(16)}
    monkeypatch.delenv("SWANLAB_MODE", raising=False)  # the default tracking: SwanLab offline, no account needed
    config = config_for(model_dir, tmp_path, max_steps=3, val_every_n_steps=2, val_size=4, swanlab_mode=None)
    first = train_lora(config, model=loaded, items=items)
    assert not first.reused and first.best_adapter_dir is not None
    assert (first.best_adapter_dir / "adapter_model.safetensors").is_file()
    assert list((first.run_dir / "swanlab").glob("run-*"))
    val_rows = [row for row in map(json.loads, (first.run_dir / "metrics.jsonl").read_text().splitlines())
                if "val/acc" in row]
    assert [row["step"] for row in val_rows] == [1, 2]  # after steps 2 and 3 (the last)
    assert first.info["best"]["val_acc"] == max(row["val/acc"] for row in val_rows)
    assert first.run_dir.name.startswith(f"{model_dir.name}__fixture__")
    written = (first.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="paw.train"):
        again = train_lora(config, model=loaded, items=items)
    assert again.reused and again.adapter_dir == first.adapter_dir and again.final_loss == first.final_loss
    assert "reusing the finished identical run" in caplog.text
    assert (again.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns == written

    other_seed = train_lora(config_for(model_dir, tmp_path, max_steps=3, val_every_n_steps=2, val_size=4, seed=7),
                            model=loaded, items=items)
    assert not other_seed.reused and other_seed.run_dir != first.run_dir
    config.force = True
    assert not train_lora(config, model=loaded, items=items).reused


def test_resume_after_a_kill_continues_like_an_uninterrupted_run(tiny_model, tmp_path: Path, caplog) -> None:
    model_dir = tiny_model("qwen2")
    loaded = load_base(str(model_dir))
    items = {"fixture": fixture_items(10)}
    settings = dict(max_steps=6, grad_accum=2, batch_size=2, lora_dropout=0.2, checkpoint_every_n_steps=2)
    whole = train_lora(config_for(model_dir, tmp_path / "a", **settings), model=loaded, items=items)

    killed = config_for(model_dir, tmp_path / "b", **settings)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_lora(killed, model=loaded, items=items, callbacks=[CrashAt(5)])
    assert not (tmp_path / "b" / whole.run_dir.name / "adapter").exists()
    checkpoint = tmp_path / "b" / whole.run_dir.name / "checkpoints" / "last"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json", "tensors.safetensors"]  # no pickle
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["global_step"] == 4 and state["paw_data"]["next_micro_batch"] == 8
    assert state["state_dict"] and all(".lora_" in key for key in state["state_dict"])  # no base weights
    killed.resume = True
    with caplog.at_level(logging.INFO, logger="paw.train"):
        resumed = train_lora(killed, model=loaded, items=items)
    assert "resuming from step 4" in caplog.text
    assert resumed.steps == 6 and len(losses(resumed.run_dir)) == 6
    assert losses(resumed.run_dir) == pytest.approx(losses(whole.run_dir), rel=1e-5)
    expected = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    got = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_model, tmp_path: Path) -> None:
    model_dir = tiny_model("llama")
    config = config_for(model_dir, tmp_path, lr=float("inf"), checkpoint_every_n_steps=1)
    with pytest.raises(PawError, match="training loss became (nan|inf) at step") as error:
        train_lora(config, model=load_base(str(model_dir)), items={"fixture": fixture_items(8)})
    assert "--lr" in str(error.value) and "\n" not in str(error.value)
    run_dir = next(tmp_path.iterdir())
    assert (run_dir / "checkpoints" / "last" / "state.json").is_file() and not (run_dir / "adapter").exists()


def test_command_line_maps_onto_the_config() -> None:
    args = build_parser("train").parse_args(
        ["train", "--model", "m", "--dataset", "arc-challenge", "--dataset", "piqa", "--lr", "2e-4", "--preset",
         "full", "--target_modules", "q_proj", "v_proj", "--resume", "--devices", "2", "--strategy", "ddp"])
    config = config_from_args(args)
    assert config == TrainConfig(model="m", datasets=["arc-challenge", "piqa"], lr=2e-4, preset="full",
                                 target_modules=["q_proj", "v_proj"], resume=True, devices=2, strategy="ddp")


def test_paw_train_command_trains_on_task_data_in_bf16(tiny_model, tmp_path: Path, capsys) -> None:
    from paw.cli import main

    model_dir = tiny_model("llama")
    cached = load_base(str(model_dir))
    before = cached.model.model.layers[0].self_attn.q_proj.weight.clone()
    argv = ["train", "--model", str(model_dir), "--dataset", "ARC_Easy", "--max-steps", "2", "--batch-size", "2",
            "--precision", "bf16-true", "--output-dir", str(tmp_path), "--swanlab-mode", "disabled"]
    assert main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    info = json.loads((run_dir / "adapter" / "paw_run.json").read_text())
    assert info["data"]["tasks"] == ["arc-easy"] and info["data"]["train_items"] > 1000
    assert load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))  # bf16 LoRA weights, saved
    # bf16-true trained on a bf16 copy: the float32 base in the cache is untouched.
    assert torch.equal(cached.model.model.layers[0].self_attn.q_proj.weight, before)
    assert main(argv) == 0 and "reused the finished identical run" in capsys.readouterr().out


class OutOfMemoryAtFirstBatch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_says_which_setting_to_lower(tiny_model, tmp_path: Path) -> None:
    model_dir = tiny_model("llama")
    with pytest.raises(PawError, match=r"lower --batch_size \(now 4\).*--grad_accum.*--max_length"):
        train_lora(config_for(model_dir, tmp_path), model=load_base(str(model_dir)), items={"fixture": fixture_items(8)},
                   callbacks=[OutOfMemoryAtFirstBatch()])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_fsdp_on_cpu_is_a_one_line_error(tiny_model, tmp_path: Path) -> None:
    model_dir = tiny_model("llama")
    loaded = load_base(str(model_dir))
    with pytest.raises(PawError, match="strategy fsdp needs CUDA GPUs"):
        train_lora(config_for(model_dir, tmp_path, strategy="fsdp"), model=loaded, items={"fixture": fixture_items(8)})
    assert not any("lora" in name for name, _ in loaded.model.named_modules())  # LoRA removed after the error


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_answer_loss_equals_the_models_own_labels_loss(tiny_model, arch):
    from transformers import AutoModelForCausalLM

    from paw.train.module import answer_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch), attn_implementation="eager")
    torch.manual_seed(0)
    input_ids = torch.randint(3, 300, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a right-padded row
    labels = torch.full_like(input_ids, -100)
    labels[0, 8:12] = input_ids[0, 8:12]
    labels[1, 6:9] = input_ids[1, 6:9]
    labels[2, 11] = input_ids[2, 11]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    expected = model(**batch).loss
    assert torch.allclose(answer_loss(model, batch), expected, atol=1e-5)
