"""Teachers declare what they can do; nothing outside ``distill/teachers/`` asks what class one is.

The declarations (:class:`distill.teachers.base.Teacher`): ``scoring_limit`` (can it score
sequences written during training), ``can_generate`` / ``causal_lm``, ``members``,
``aligns_tokenizers``, ``spec``, ``covers`` and ``heldout_output`` (what validation compares the
student with). Teachers defined only in a test get the same treatment as the built-in ones.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.build import build_components
from distill.config import ConfigError
from distill.models import ModelSpec
from distill.onpolicy import SequenceSource
from distill.teachers.base import NoTeacher, Teacher
from distill.teachers.cached import CachedTeacher
from distill.teachers.cross_tokenizer import CrossTokenizerTeacher
from distill.teachers.ensemble import EnsembleTeacher
from distill.teachers.hf import HFTeacher
from distill.teachers.remote import RemoteTeacher
from distill.types import TeacherKind, TeacherOutput
from tests.fixtures.teachers import FrozenRows, UniformFull

DISTILL = Path(__file__).resolve().parents[2] / "distill"
TINY = {"model_type": "llama", "vocab_size": 2048, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4}


def _hf() -> HFTeacher:
    return HFTeacher(ModelSpec(config=TINY))


def _teachers() -> dict[str, Teacher]:
    return {"none": NoTeacher(), "hf": _hf(), "remote": RemoteTeacher("http://127.0.0.1:9", model="m"),
            "cached": CachedTeacher.__new__(CachedTeacher),  # declarations need no cache on disk
            "cross_tokenizer": CrossTokenizerTeacher(_hf(), tokenizer="unused"),
            "ensemble": EnsembleTeacher({"a": UniformFull(), "b": _hf()})}


def test_every_teacher_declares_its_capabilities():
    t = _teachers()
    scores = {name: teacher.scores_new_sequences for name, teacher in t.items()}
    assert scores == {"none": False, "hf": True, "remote": True, "cached": False, "cross_tokenizer": True,
                      "ensemble": True}
    assert {name for name, teacher in t.items() if teacher.can_generate} == {"hf"}
    assert {name for name, teacher in t.items() if teacher.aligns_tokenizers} == {"cross_tokenizer"}
    assert {name: sorted(teacher.members) for name, teacher in t.items() if teacher.members} == {"ensemble": ["a", "b"]}
    assert t["cross_tokenizer"].spec is t["cross_tokenizer"].teacher.spec and t["hf"].spec is not None
    assert t["remote"].spec is None and t["none"].spec is None
    with pytest.raises(NotImplementedError):
        t["remote"].causal_lm()
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    # a cache covers only the batches that carry its rows; another tokenization is never compared
    assert not t["cached"].covers(batch) and t["cached"].heldout_output(batch).kind == TeacherKind.NONE
    assert t["cross_tokenizer"].heldout_output({**batch, "teacher_input_ids": batch["input_ids"]}).kind == "none"
    assert t["none"].heldout_output(batch).kind == TeacherKind.NONE


def test_sequence_sources_read_the_declarations():
    remote = RemoteTeacher("http://127.0.0.1:9", model="m")  # never contacted
    SequenceSource(lmbda=1.0).check(remote)  # it scores whatever ids it is sent
    with pytest.raises(ConfigError, match=r"SeqKD.*samples from the teacher.*RemoteTeacher"):
        SequenceSource(lmbda=0.0, off_policy="teacher").check(remote)  # a served model name is not a model
    # a teacher defined only here, as an ensemble member: its own declaration refuses
    with pytest.raises(ConfigError, match=r"teacher\.teachers\.frozen: FrozenRows knows the dataset's rows only"):
        SequenceSource(lmbda=1.0).check(EnsembleTeacher({"ok": UniformFull(), "frozen": FrozenRows()}))
    with pytest.raises(ConfigError, match="cached teacher"):
        SequenceSource(lmbda=1.0).check(EnsembleTeacher({"ok": UniformFull(), "c": CachedTeacher.__new__(CachedTeacher)}))
    SequenceSource(lmbda=1.0).check(_teachers()["cross_tokenizer"])  # it re-tokenizes whatever the batch holds


def test_a_sparse_teacher_without_batch_fields_is_scored_in_validation(tiny_cfg, tmp_path):
    """A served teacher brings no batch fields; validation used to look for a cache's and skip it."""
    cfg = tiny_cfg("loss=ce", "~teacher", "+teacher._target_=tests.fixtures.teachers.TopOneSparse")
    parts = build_components(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(parts.module, datamodule=parts.datamodule, verbose=False)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"val/loss", "val/kl_sparse", "val/agreement"} <= set(got)
    # all of the teacher's mass is on id 7: the KL is the student's CE on 7, averaged over the tokens
    batch = next(iter(parts.datamodule.val_dataloader()))
    with torch.no_grad():
        logits = parts.module.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != -100
    nll7 = -torch.log_softmax(logits[:, :-1, :2048].float(), -1)[..., 7]
    assert got["val/kl_sparse"] == pytest.approx(float(nll7[mask].mean()), rel=1e-4)
    assert math.isfinite(got["val/agreement"])


# ---------------------------------------------------------------------------- no sniffing
#: attributes read with getattr on a TeacherOutput (a dataclass: optional fields), which is allowed
_OUTPUT_FIELDS = {f.name for f in dataclasses.fields(TeacherOutput)}


def _teacher_classes() -> set[str]:
    """The names of the teacher classes (every class defined under ``distill/teachers/``)."""
    return {n.name for path in (DISTILL / "teachers").rglob("*.py") for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ClassDef)} - {"Teacher"}


def _violations(path: Path, root: Path = DISTILL.parent) -> list[str]:
    tree = ast.parse(path.read_text())
    classes = _teacher_classes()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill.teachers.") \
                and node.module != "distill.teachers.base":
            out.append(f"imports {node.module} (a concrete teacher)")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        target = ast.unparse(node.args[0]).lower()
        if "teacher" not in target:
            continue
        if node.func.id in ("hasattr", "getattr") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            name = node.args[1].value  # (a computed name is a proxy forwarding every attribute)
            if name not in _OUTPUT_FIELDS:
                out.append(f"{node.func.id}({ast.unparse(node.args[0])}, {name!r})")
        if node.func.id == "isinstance" and len(node.args) > 1:
            names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
            if names & classes:
                out.append(f"isinstance({ast.unparse(node.args[0])}, {ast.unparse(node.args[1])})")
    return [f"{path.relative_to(root)}:{v}" for v in out]


def test_nothing_outside_teachers_inspects_a_teachers_class_or_fields():
    found = [v for path in sorted(DISTILL.rglob("*.py")) if "teachers" not in path.relative_to(DISTILL).parts[:1]
             for v in _violations(path)]
    assert not found, "read a declared capability of distill.teachers.base.Teacher instead:\n" + "\n".join(found)


def test_the_sniffing_check_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from distill.teachers.cached import CachedTeacher\n"
                   "def f(teacher, out):\n"
                   "    getattr(out.teacher, 'tail', None)\n"  # a TeacherOutput field: allowed
                   "    return isinstance(teacher, CachedTeacher) or hasattr(teacher, 'model')\n")
    found = _violations(bad, root=tmp_path)
    assert sorted(v.split(":", 1)[1] for v in found) == ["hasattr(teacher, 'model')",
                                                        "imports distill.teachers.cached (a concrete teacher)",
                                                        "isinstance(teacher, CachedTeacher)"]
