"""Pruning as pure functions on tiny config-built models (fast): what is kept equals the teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

from distill.config import ConfigError
from distill.pruning import PruneSpec, calibrate, prune


def tiny_llama(layers: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).eval()


def batch(n: int = 3, length: int = 12):
    torch.manual_seed(1)
    ids = torch.randint(0, 96, (n, length))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # padding is left out of every average
    return ids, mask


def layer_params(model, i):
    return dict(model.model.layers[i].named_parameters())


def test_keep_list_copies_the_kept_layers_weight_for_weight_and_renumbers_them(tmp_path):
    teacher = tiny_llama()
    student, record = prune(teacher, PruneSpec(method="keep", keep=[4, 0, 2]))
    assert record["kept_layers"] == [0, 2, 4] and record["dropped_layers"] == [1, 3, 5]
    assert student.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    for new, old in enumerate([0, 2, 4]):
        for name, p in layer_params(student, new).items():
            assert torch.equal(p, layer_params(teacher, old)[name]), (new, name)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    # An ordinary folder: saves and reloads with from_pretrained, same outputs.
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, attention_mask=mask).logits, student(ids, attention_mask=mask).logits)


def test_keeping_every_layer_reproduces_the_teacher():
    teacher = tiny_llama(3)
    student, _ = prune(teacher, PruneSpec())
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(student(ids, attention_mask=mask).logits, teacher(ids, attention_mask=mask).logits)


def test_uniform_every_k_and_evenly_spaced():
    assert PruneSpec(method="uniform", every=3).kept_layers(30) == list(range(0, 30, 3))
    assert PruneSpec(method="uniform", num_layers=4).kept_layers(10) == [0, 3, 6, 9]


def test_block_influence_keeps_the_layers_that_change_their_input_most():
    teacher = tiny_llama()
    ids, mask = batch()
    influence, _ = calibrate(teacher, ids, mask, width=False)
    assert len(influence) == 6 and all(0.0 <= v <= 2.0 for v in influence)
    student, record = prune(teacher, PruneSpec(method="block_influence", num_layers=2), ids, mask)
    top = sorted(sorted(range(6), key=lambda i: -influence[i])[:2])
    assert record["kept_layers"] == top and record["block_influence"] == pytest.approx(influence, abs=1e-6)
    assert record["calibration"] == {"sequences": 3, "tokens": int(mask.sum())}


def test_block_influence_is_zero_for_a_layer_that_is_the_identity():
    teacher = tiny_llama(3)
    layer = teacher.model.layers[1]
    for p in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
        torch.nn.init.zeros_(p)  # residual branches add nothing: output == input
    influence, _ = calibrate(teacher, *batch(), width=False)
    assert influence[1] == pytest.approx(0.0, abs=1e-5) and min(influence[0], influence[2]) > 1e-3


def test_width_pruned_mlp_equals_the_teacher_mlp_with_dropped_channels_zeroed():
    teacher = tiny_llama(2)
    ids, mask = batch()
    _, channels = calibrate(teacher, ids, mask)
    student, record = prune(teacher, PruneSpec(intermediate_size=20), ids, mask)
    assert student.config.intermediate_size == 20 and record["intermediate_size"] == {"teacher": 48, "student": 20}
    x = torch.randn(2, 5, 32)
    for i in range(2):
        kept = torch.topk(channels[i], 20).indices.sort().values
        t_mlp, s_mlp = teacher.model.layers[i].mlp, student.model.layers[i].mlp
        masked = torch.zeros(48)
        masked[kept] = 1.0
        with torch.no_grad():
            expected = t_mlp.down_proj(t_mlp.act_fn(t_mlp.gate_proj(x)) * t_mlp.up_proj(x) * masked)
            torch.testing.assert_close(s_mlp(x), expected)
        assert 0.0 < record["mlp_activation_kept"][str(i)] <= 1.0


def test_channel_importance_ignores_padding():
    teacher = tiny_llama(1)
    ids, mask = batch()
    garbage = ids.clone()
    garbage[0, 8:] = (ids[0, 8:] + 7) % 96  # only padded positions differ
    assert torch.allclose(calibrate(teacher, ids, mask)[1][0], calibrate(teacher, garbage, mask)[1][0], atol=1e-6)


def test_gemma3_layer_types_follow_the_kept_layers():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8)
    teacher = AutoModelForCausalLM.from_config(cfg).eval()
    student, record = prune(teacher, PruneSpec(method="keep", keep=[0, 5]))
    assert student.config.layer_types == [cfg.layer_types[0], cfg.layer_types[5]]
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert student(ids).logits.shape == (1, 10, 64)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "keep", "keep": []}, "keeps no layer"),
    ({"method": "uniform"}, "exactly one"),
    ({"method": "block_influence"}, "num_layers"),
    ({"method": "uniform", "num_layers": 0}, "keeps nothing"),
    ({"method": "shortest"}, "use one of"),
])
def test_bad_specs_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneSpec(**kwargs)


def test_a_layer_index_the_teacher_lacks_is_named():
    with pytest.raises(ConfigError, match=r"layer\(s\) \[30\].*0\.\.29"):
        PruneSpec(method="keep", keep=[0, 30]).kept_layers(30)
    with pytest.raises(ConfigError, match="wider than the teacher"):
        prune(tiny_llama(1), PruneSpec(intermediate_size=64), *batch())
