"""Rationale distillation and multi-teacher data, end to end on the local server.

One run: three teachers answer twelve rationale-format prompts (two of them scripted so that the
rationale names a function the code lacks, and the cheap model's answers half broken); then the
filter, the dataset report, and a few training steps on the two task prefixes.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from distill.data.chat import MultiTaskChatSource
from distill.losses.functional import IGNORE_INDEX
from distill.teacher_data import rationale
from distill.teacher_data.filters import filter_records
from distill.teacher_data.prompts import generate_prompts
from distill.teacher_data.promptset import write_prompts

from fake_anthropic import TEST_KEY, FakeAnthropic, compose_teacher_cfg, api_key_set
from test_api_e2e import tokenizer_from

MODELS = ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5"]
PROMPTS_CFG = {"seed": 3, "num_prompts": 10, "languages": {"python": 1.0}, "response_format": "rationale",
               "proportions": {"base": 0.6, "algorithms": 0.2, "data_structures": 0.2, "code_files": 0.0}}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    from distill.teacher_data.cli import run

    out = tmp_path_factory.mktemp("multi")
    prompts = generate_prompts(PROMPTS_CFG)
    prompts += [dataclasses.replace(p, text=p.text.replace(rationale.INSTRUCTION, "[[disagree]]\n\n" + rationale.INSTRUCTION),
                                    id="") for p in prompts[:2]]
    write_prompts(prompts, out / "my_prompts.jsonl")
    server = FakeAnthropic(broken={"claude-haiku-4-5": 0.5}).start()
    try:
        with api_key_set():
            cfg = compose_teacher_cfg(out / "td", server.url, [f"prompts_file={out / 'my_prompts.jsonl'}",
                                                             f"sampling.models=[{','.join(MODELS)}]"])
            result = run(cfg)
    finally:
        server.stop()
    return out / "td", result, prompts


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_teacher_answers_every_prompt_and_each_record_names_its_model(multi_run):
    out, result, prompts = multi_run
    recs = lines(out / "results.jsonl")
    assert result["generation"]["done_now"] == len(prompts) * 3 == len(recs)
    assert {(r["prompt_id"], r["requested_model"]) for r in recs} == {(p.id, m) for p in prompts for m in MODELS}
    assert all(r["model"] == r["requested_model"] for r in recs)  # the server echoes the model it ran
    # The rationale and the answer are separate fields, parsed as each reply arrived.
    assert all(r["rationale"] and r["answer"] and "<answer>" not in r["answer"] for r in recs)
    assert all("```python" in r["answer"] and "```" not in r["rationale"] for r in recs)
    est = result["estimate"]
    assert est["teachers"] == MODELS and est["calls"] == 3 * est["calls_per_model"] == 3 * len(prompts)


def test_filter_keeps_the_best_answer_per_prompt_and_drops_disagreeing_rationales(multi_run):
    out, result, prompts = multi_run
    report = result["filter"]
    kept = lines(out / "filtered.jsonl")
    disagree = {p.id for p in prompts if "[[disagree]]" in p.text}
    assert len({k["prompt_id"] for k in kept}) == len(kept)  # one answer per prompt, across all models
    assert not disagree & {k["prompt_id"] for k in kept}
    # All three answers of both scripted prompts go, as a mismatch or (the broken cheap model) as a syntax error.
    assert report["removed"]["rationale_mismatch"] >= 4
    rejected = lines(out / "rejected.jsonl")
    assert {r["qc"]["removed"] for r in rejected if r["prompt_id"] in disagree} <= {"rationale_mismatch", "syntax_error"}
    mism = [r for r in rejected if r["qc"]["removed"] == "rationale_mismatch"]
    assert all(r["qc"]["rationale_names_missing"] == ["helper_that_is_not_there"] for r in mism)
    assert len(kept) == len(prompts) - len(disagree)
    assert report["removed"]["not_best_sample"] >= len(kept)  # the other teachers' answers competed and lost
    assert len(kept) + len(rejected) == report["input_records"] == 3 * len(prompts)
    assert all(k["rationale"] and k["answer"] and k["meta"]["response_format"] == "rationale" for k in kept)


def test_per_model_acceptance_and_cost_per_accepted_answer(multi_run):
    out, result, _ = multi_run
    by = result["filter"]["by_model"]
    recs = lines(out / "results.jsonl")
    assert set(by) == set(MODELS) and sum(m["kept"] for m in by.values()) == result["filter"]["kept"]
    for name, m in by.items():
        mine = [r for r in recs if r["requested_model"] == name]
        assert m["records"] == len(mine)
        assert m["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine), abs=1e-6)
        assert m["acceptance_rate"] == pytest.approx(m["kept"] / m["records"], abs=1e-4)
        if m["kept"]:
            assert m["cost_per_accepted_usd"] == pytest.approx(m["cost_usd"] / m["kept"], abs=2e-6)
    rejected = lines(out / "rejected.jsonl")
    assert any(r["teacher"] == "claude-haiku-4-5" and r["qc"]["removed"] == "syntax_error" for r in rejected)
    assert not any(r["teacher"] != "claude-haiku-4-5" and r["qc"]["removed"] == "syntax_error" for r in rejected)


def test_dataset_report_is_written_by_all_and_by_stage_report(multi_run):
    from distill.teacher_data.cli import run

    out, result, _ = multi_run
    md = (out / "dataset_report.md").read_text()
    for heading in ("## Filter funnel", "## Language mix", "## Task-type mix", "## Answer lengths",
                    "## Cost by model", "## Samples: accepted vs rejected"):
        assert heading in md
    report = result["filter"]
    assert f"| rationale_mismatch | {report['removed']['rationale_mismatch']} |" in md
    assert f"| (input) | | {report['input_records']} |" in md
    for name, m in report["by_model"].items():
        assert f"| {name} | {m['records']} | {m['kept']} |" in md
    assert "**rationale_mismatch**" in md and "**syntax_error**" in md  # one rejected sample per reason
    png = (out / "dataset_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    (out / "dataset_report.md").unlink()
    cfg = compose_teacher_cfg(out, "http://127.0.0.1:9", ["stage=report", "report_title=again"])
    res = run(cfg)  # no API call, no key needed
    assert res["report"]["kept"] == report["kept"]
    assert (out / "dataset_report.md").read_text().startswith("# Dataset report: again")


def test_report_before_filter_is_a_clear_error(tmp_path):
    from distill.teacher_data.report import write_report

    with pytest.raises(FileNotFoundError, match="run stage=filter"):
        write_report(tmp_path)


def test_multitask_examples_carry_task_prefixes_masked_prompts_and_weights(multi_run):
    out, _, _ = multi_run
    path = out / "filtered.jsonl"
    kept = lines(path)
    tok = tokenizer_from([k["prompt"] + k["rationale"] + k["answer"] for k in kept])
    tasks = [{"name": "rationale", "prefix": "[rationale] ", "target": ["rationale", "answer"], "weight": 1.0},
             {"name": "answer", "prefix": "[answer] ", "target": ["answer"], "weight": 0.5}]
    src = MultiTaskChatSource(str(path), tasks, val_fraction=0.2, overlong="truncate")
    train = src.examples("train", tok, 2048)
    st = src.stats["train"]
    n_train = st["rationale"]["records"]
    assert st["rationale"]["copies"] == n_train  # weight 1: each pair once
    assert 0 < st["answer"]["copies"] < n_train  # weight 0.5: a seeded part of the pairs
    assert len(train) == st["rationale"]["copies"] + st["answer"]["copies"]
    assert src.examples("train", tok, 2048) == train  # the seeded copies are reproducible
    assert len(src.examples("val", tok, 2048)) == 2 * src.stats["val"]["rationale"]["records"]  # val unweighted
    by_prefix = {"[rationale]": 0, "[answer]": 0}
    for e in train:
        n_prompt = next(i for i, x in enumerate(e["labels"]) if x != IGNORE_INDEX)
        prompt, target = tok.decode(e["input_ids"][:n_prompt]), tok.decode([x for x in e["labels"][n_prompt:] if x != IGNORE_INDEX])
        assert all(x == IGNORE_INDEX for x in e["labels"][:n_prompt])  # prefix and prompt masked
        prefix = "[rationale]" if "[rationale]" in prompt else "[answer]"
        assert prefix in prompt and prefix not in target
        by_prefix[prefix] += 1
        rec = next(k for k in kept if k["answer"].strip()[:40] in target)
        assert (rec["rationale"][:40] in target) == (prefix == "[rationale]")
    assert by_prefix["[rationale]"] == n_train and by_prefix["[answer]"] == st["answer"]["copies"]


def test_a_few_training_steps_on_both_task_prefixes(multi_run, tiny_cfg, tmp_path):
    """The real training entry point with data=api_rationale on the tiny debug student."""
    from distill.train import train

    out, _, _ = multi_run
    cfg = tiny_cfg("data=api_rationale", "teacher=none", "loss=ce", f"data.source.path={out / 'filtered.jsonl'}",
                   "data.seq_len=256", "data.source.overlong=truncate", "data.source.val_fraction=0.2",
                   "trainer.max_steps=3", output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert 0 < metrics["val/loss"] < 20


def test_rationale_parser_and_agreement_rules():
    ok = "<rationale>Use `add(a, b)`; it returns a + b.</rationale>\n<answer>```python\ndef add(a, b):\n    return a + b\n```</answer>"
    r, a = rationale.parse(ok)
    assert r.startswith("Use") and a.startswith("```python") and rationale.disagreements(r, a) == []
    assert rationale.parse("no tags at all") is None
    assert rationale.parse("<rationale>x</rationale><answer>cut off mid-") is None  # truncated answer
    bad = "I call helper() and then the function `merge_all` and `sorted(xs)`."
    code = "```python\ndef helper():\n    return sorted([1])\n```"
    assert rationale.disagreements(bad, code) == ["merge_all"]  # helper defined, sorted called
    kept, rep = filter_records([{"prompt_id": "p", "sample_idx": 0, "completion": ok.replace("add(a, b)`", "plus(a, b)`"),
                                 "meta": {"language": "python", "task_type": "write", "response_format": "rationale"}}])
    assert not kept and rep["removed"]["rationale_mismatch"] == 1  # parsed from the completion when absent
