"""Completion sources: batched HF generation (tiny models), LoRA, checkpoints, answers, API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.config import ConfigError
from distill.evaluation.loading import resolve_checkpoint
from distill.evaluation.settings import GenerationSettings
from distill.evaluation.sources import AnswersSource, ApiSource, CompletionSource, HFSource, LocalModel
from distill.evaluation.targets import build
from distill.evaluation.sources.hf import _stop_criteria

PROMPTS = [("t0", "def add(a, b):\n"), ("t1", "class Stack:\n    def push(self, x):\n"),
           ("t2", "for i in range(10):\n")]


LOCAL = "distill.evaluation.sources.local.LocalModel"


def hf(path, **kw):
    src = LocalModel(path=str(path), **kw)
    src.open()
    return src.generator


def test_greedy_batched_generation(tiny_model_dir):
    src = hf(tiny_model_dir)
    assert src.style == "completion"  # no chat template
    out = src.generate(PROMPTS, GenerationSettings(max_new_tokens=8, batch_size=2), None)
    assert len(out.texts) == 3 and all(len(t) == 1 for t in out.texts)
    assert all(0 < n <= 8 for row in out.new_tokens for n in row)
    assert out.seconds > 0 and out.total_tokens > 0
    # batch composition does not change greedy outputs
    single = src.generate(PROMPTS, GenerationSettings(max_new_tokens=8, batch_size=1), None)
    assert single.texts == out.texts


def test_sampling_n_per_prompt_is_seeded(tiny_model_dir):
    src = hf(tiny_model_dir)
    s = GenerationSettings(n=3, temperature=1.0, top_p=0.9, max_new_tokens=6, batch_size=4)
    a = src.generate(PROMPTS[:2], s, None)
    b = src.generate(PROMPTS[:2], s, None)
    assert [len(t) for t in a.texts] == [3, 3]
    assert a.texts == b.texts  # same seed, same batches
    greedy = src.generate(PROMPTS[:1], GenerationSettings(n=4, max_new_tokens=6), None)
    assert len(set(greedy.texts[0])) == 1 and len(greedy.texts[0]) == 4


def test_stop_criteria_per_row(tiny_model_dir):
    src = hf(tiny_model_dir)
    tok = src.tokenizer
    prompt = tok("x = 1\n")["input_ids"]
    rows = [prompt + tok("    return a\ndef other")["input_ids"],
            prompt + tok("    return a + b + c")["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    crit = _stop_criteria(["\ndef"], tok, len(prompt))[0]
    assert crit(ids, None).tolist() == [True, False]


def test_chat_template_models_get_chat_prompts(tiny_chat_model_dir):
    src = hf(tiny_chat_model_dir)
    assert src.style == "chat"
    assert src.format("solve it", "chat").endswith("assistant: ")
    out = src.generate([("t", "write add")], GenerationSettings(max_new_tokens=4), None,
                       style="chat")
    assert len(out.texts[0]) == 1
    with pytest.raises(ValueError, match="chat template"):
        HFSource(src.model, _no_template(src.tokenizer), "cpu", chat=True)


def test_system_prompt_precedes_every_chat_prompt_and_keys_the_results(tiny_chat_model_dir):
    plain = hf(tiny_chat_model_dir)
    system = hf(tiny_chat_model_dir, system_prompt="Answer with code only.")
    assert "Answer with code only." in system.format("solve it", "chat")
    assert "Answer with code only." not in plain.format("solve it", "chat")
    assert system.format("solve it", "chat").endswith(plain.format("solve it", "chat"))
    # another system prompt is other settings: a rerun in the same output folder must not reuse answers
    assert LocalModel(path="m", system_prompt="x").settings() != LocalModel(path="m").settings()
    assert LocalModel(path="m").settings() == LocalModel(path="m", system_prompt="").settings()


def _no_template(tok):
    import copy

    t = copy.copy(tok)
    t.chat_template = None
    return t


def test_lora_adapter_on_its_base(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    src = LocalModel(adapter=str(tmp_path / "adapter"))
    assert src.kind == "lora"
    src.open(None, tmp_path)
    assert isinstance(src.generator, HFSource) and src.holds_weights
    assert src.generate(PROMPTS[:1], GenerationSettings(max_new_tokens=3), None).texts
    # a folder with adapter_config.json given as `path` is recognised as an adapter too
    assert LocalModel(path=str(tmp_path / "adapter")).kind == "lora"


def test_checkpoint_resolution(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    for f in Path(tiny_model_dir).iterdir():
        (run / "student" / f.name).write_bytes(f.read_bytes())
    spec = LocalModel(checkpoint=str(run))
    assert spec.kind == "checkpoint"
    assert resolve_checkpoint(spec, tmp_path) == str(run / "student")
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        resolve_checkpoint(LocalModel(checkpoint=str(tmp_path / "nope")), tmp_path)


def test_model_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match="`models.teacher`.*set one of path"):
        build({"_target_": LOCAL, "role": "teacher"}, "models.teacher", CompletionSource)
    with pytest.raises(ConfigError, match="`models.x`.*role must be one of"):
        build({"_target_": LOCAL, "path": "p", "role": "boss"}, "models.x", CompletionSource)
    with pytest.raises(ConfigError, match=r"model\.pth: unknown key .*'path'"):
        build({"_target_": LOCAL, "pth": "p"}, "model", CompletionSource)
    with pytest.raises(ValueError, match="generation.temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="generation.style"):
        GenerationSettings(style="poem")


def test_answers_source_matches_by_id_or_prompt(tmp_path):
    path = tmp_path / "teacher.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"task_id": "t0", "response": "```python\ndef add(a, b):\n    return a + b\n```"},
        {"prompt": "def neg(x):\n", "completion": ["A", "B"]},
    ]) + "\n")
    src = AnswersSource(path)
    out = src.generate([("t0", "ignored"), ("t9", "def neg(x):\n")],
                       GenerationSettings(n=1), None, raw_prompts=["x", "def neg(x):\n"])
    assert out.texts[0][0].startswith("```python") and out.texts[1] == ["A"]
    with pytest.raises(KeyError, match="no answer for task zz"):
        src.generate([("zz", "?")], GenerationSettings(), None)
    with pytest.raises(ValueError, match="generation.n=3"):
        src.generate([("t9", "def neg(x):\n")], GenerationSettings(n=3), None)


def test_api_source_calls_the_client_n_times():
    calls = []

    class Stub:
        def complete(self, prompt, *, max_tokens, temperature, top_p, stop):
            calls.append((prompt, max_tokens, temperature))
            return f"answer to {prompt}", 7

    src = ApiSource(Stub(), concurrency=2)
    out = src.generate([("a", "p1"), ("b", "p2")],
                       GenerationSettings(n=2, temperature=0.5, max_new_tokens=64), None)
    assert out.texts == [["answer to p1"] * 2, ["answer to p2"] * 2]
    assert out.total_tokens == 28 and len(calls) == 4 and calls[0][1:] == (64, 0.5)
