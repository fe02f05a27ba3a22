"""sequences.reward=CodeReward: an MBPP answer's program runs against the prompt's tests in the sandbox
child, never in the training process: a correct answer scores 1, a wrong one 0, a hostile one (fork
bomb, writes outside its temp dir) is contained and scores 0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from distill.onpolicy.rewards import CodeReward, MetaHook

MBPP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
pytestmark = pytest.mark.skipif(not MBPP.is_file(), reason=f"no local MBPP at {MBPP}")


@pytest.fixture(scope="module")
def task():
    from distill.onpolicy.prompt_sets import MBPPPrompts

    rec = MBPPPrompts(path=str(MBPP), max_examples=1).records("train")[0]
    return rec


@pytest.fixture(scope="module")
def reward():
    r = CodeReward(timeout=5.0, workers=2)
    yield r
    r.close()


def fenced(code: str) -> str:
    return f"Here is the function:\n```python\n{code}\n```"


def test_correct_answer_scores_1_and_wrong_answer_0(task, reward):
    name = task.meta["entry_point"]
    wrong = f"def {name}(*args, **kwargs):\n    return None"
    got = reward([task.answer, fenced(wrong), "no code at all"], [task.meta] * 3)
    assert got.tolist() == [1.0, 0.0, 0.0]


def test_hostile_answers_are_contained_and_score_0(task, reward, tmp_path):
    name = task.meta["entry_point"]
    target = tmp_path / "escaped.txt"
    reference = task.answer.split("```python\n", 1)[1].rsplit("```", 1)[0]  # the correct function itself
    fork_bomb = f"import os\nwhile True:\n    os.fork()\n{reference}"
    writes = f"{reference}\nopen({str(target)!r}, 'w').write('escaped')"
    forks_before = len(os.listdir("/proc/self/task"))
    got = reward([fenced(fork_bomb), fenced(writes)], [task.meta] * 2)
    assert got.tolist() == [0.0, 0.0]
    assert not target.exists(), "the write outside the sample's temp dir was blocked"
    assert len(os.listdir("/proc/self/task")) <= forks_before + 2  # nothing forked inside this process
    # the sandbox survives and still scores a correct answer
    assert reward([task.answer], [task.meta]).tolist() == [1.0]


def test_prompts_without_tests_score_0_and_meta_reaches_batches(reward):
    assert reward(["```python\nx = 1\n```"], [{"task_id": "t"}]).tolist() == [0.0]
    hook = MetaHook()
    batch = hook.batch([{"meta": {"a": 1}}, {}], {"input_ids": torch.zeros(2, 3)})
    assert batch["meta"] == [{"a": 1}, {}]


def test_samples_per_prompt_groups_rows_and_scores_each(task, tiny_cfg, tmp_path):
    """Through the real source on a tiny model: B prompts become B * n consecutive rows, each with a
    reward and its prompt's group and meta."""
    from distill.build import build_components
    from distill.onpolicy import SequenceSource

    class Scripted:
        needs_meta = True

        def __init__(self):
            self.seen = None

        def __call__(self, answers, metas):
            self.seen = (list(answers), list(metas))
            return torch.arange(len(answers), dtype=torch.float32)

    parts = build_components(tiny_cfg("loss=opd", output_dir=tmp_path / "run")).load()
    scorer = Scripted()
    src = SequenceSource(lmbda=1.0, samples_per_prompt=3, reward=scorer, sampling={"max_new_tokens": 4},
                         prompts={"mode": "prefix", "prompt_tokens": 4})
    src.connect(parts.tokenizer)
    ids = torch.randint(5, 500, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
             "meta": [{"task_id": "a"}, {"task_id": "b"}]}
    new, logs = src(batch, parts.module, step=0)
    assert new["input_ids"].shape[0] == 6
    # each row keeps its prompt's meta (a routed teacher reads it), in row order
    assert [m["task_id"] for m in new["meta"]] == ["a"] * 3 + ["b"] * 3
    assert new["group"].tolist() == [0, 0, 0, 1, 1, 1]
    assert new["reward"].tolist() == [0, 1, 2, 3, 4, 5] and "reward_mean" in logs
    assert [m["task_id"] for m in scorer.seen[1]] == ["a"] * 3 + ["b"] * 3
    assert torch.equal(new["input_ids"][:3, :4], ids[:1, :4].expand(3, 4))
    loss, _ = parts.module.step_loss(new, 0)
    assert torch.isfinite(loss)
    with pytest.raises(Exception, match="lmbda=1"):
        SequenceSource(lmbda=0.5, samples_per_prompt=2)
