"""Quality-control filters on real examples, and the report that counts them."""

from __future__ import annotations

import json

import pytest

from distill.teacher_data.consistency import evaluate_answer, rank_samples, sandbox_env
from distill.teacher_data.filters import filter_file, filter_records, format_report, is_refusal
from distill.teacher_data.syntax import check_syntax, extract_code_blocks

VALID = {
    "python": "from dataclasses import dataclass\n\n@dataclass\nclass P:\n    x: int\n\n"
              "def norm(ps: list[P]) -> float:\n    return sum(p.x ** 2 for p in ps) ** 0.5\n",
    "javascript": "export async function fetchAll(urls) {\n  const out = await Promise.all(urls.map(u => fetch(u)));\n"
                  "  return out.filter(r => r.ok).map(({ status }) => status ?? 0);\n}\n",
    "java": "import java.util.*;\n\npublic class Counter<T> {\n  private final Map<T, Integer> m = new HashMap<>();\n"
            "  public void add(T x) { m.merge(x, 1, Integer::sum); }\n  public int get(T x) { return m.getOrDefault(x, 0); }\n}\n",
    "cpp": "#include <algorithm>\n#include <vector>\n\ntemplate <typename T>\nT median(std::vector<T> v) {\n"
           "  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());\n  return v[v.size() / 2];\n}\n",
    "go": "package stats\n\nimport \"errors\"\n\nfunc Mean(xs []float64) (float64, error) {\n\tif len(xs) == 0 {\n"
          "\t\treturn 0, errors.New(\"empty\")\n\t}\n\tvar s float64\n\tfor _, x := range xs {\n\t\ts += x\n\t}\n"
          "\treturn s / float64(len(xs)), nil\n}\n",
    "rust": "use std::collections::HashMap;\n\npub fn freq(s: &str) -> HashMap<char, usize> {\n    let mut m = HashMap::new();\n"
            "    for c in s.chars() {\n        *m.entry(c).or_insert(0) += 1;\n    }\n    m\n}\n",
}
BROKEN = {
    "python": "def norm(ps):\n    return sum(p.x ** 2 for p in ps ** 0.5\n",        # unclosed paren
    "javascript": "function f(urls) {\n  const out = urls.map(u => );\n  return out;\n}\n",  # empty arrow body
    "java": "public class C {\n  public int get(int x) { return x + ; }\n}\n",        # dangling operator
    "cpp": "int median(std::vector<int> v) {\n  return v[v.size() / 2;\n}\n",          # unclosed bracket
    "go": "package stats\n\nfunc Mean(xs []float64) float64 {\n\tfor _, x := range xs {\n\t\ts += \n\t}\n}\n",
    "rust": "pub fn freq(s: &str) -> usize {\n    let mut n = 0\n    for c in s.chars() { n += 1; }\n    n +\n}\n",
}
SNIPPETS = {  # legal as snippets only: must be accepted via the wrappers
    "java": "public static int twice(int x) {\n  return 2 * x;\n}\n",
    "go": "x := 3\nfmt.Println(x * 2)\n",
    "rust": "let v: Vec<i32> = (1..4).collect();\nprintln!(\"{:?}\", v);\n",
    "python": ">>> sorted([3, 1, 2])\n[1, 2, 3]\n",
}


@pytest.mark.parametrize("lang", list(VALID))
def test_syntax_accepts_valid_and_rejects_broken_code_in_every_language(lang):
    assert check_syntax(VALID[lang], lang) == (True, "")
    ok, msg = check_syntax(BROKEN[lang], lang)
    assert ok is False and "line" in msg


@pytest.mark.parametrize("lang", list(SNIPPETS))
def test_snippets_that_are_not_whole_files_are_accepted(lang):
    assert check_syntax(SNIPPETS[lang], lang)[0] is True


def test_code_blocks_are_extracted_with_language_tags():
    text = "Intro\n```py\nx = 1\n```\nthen\n~~~c++\nint x;\n~~~\n```\nplain output\n```\n```rust\nfn f() {\n"
    blocks = extract_code_blocks(text)
    assert [(b.tag, b.language) for b in blocks] == [("py", "python"), ("c++", "cpp"), ("", None)]


@pytest.mark.parametrize("text,stop,expected", [
    ("I'm sorry, but I can't help with creating malware.", "end_turn", True),
    ("I cannot assist with that request.", "end_turn", True),
    ("I apologize, but I am unable to provide that.", "end_turn", True),
    ("As an AI, I do not write exploits.", "end_turn", True),
    ("Here's the function.", "refusal", True),
    ("Sorry for the long answer! Here is the code:\n```python\nx = 1\n```", "end_turn", False),
    ("The function can't return None because...", "end_turn", False),
])
def test_refusal_detection(text, stop, expected):
    assert is_refusal(text, stop) is expected


def rec(pid, completion, *, lang="python", task="write", stop="end_turn", idx=0, tests=None, prompt=None):
    return {"prompt_id": pid, "sample_idx": idx, "prompt": prompt or f"Task {pid}", "completion": completion,
            "stop_reason": stop, "meta": {"language": lang, "task_type": task, "tests": tests}}


def answer(lang, code, words="This works because the loop visits every element once and keeps a running total."):
    return f"Here is the {lang} solution.\n\n```{lang}\n{code}```\n\n{words} {lang}"


def corpus():
    recs = []
    for lang in VALID:  # one valid and one broken answer per language
        recs.append(rec(f"ok-{lang}", answer(lang, VALID[lang]), lang=lang))
        recs.append(rec(f"bad-{lang}", answer(lang, BROKEN[lang]), lang=lang))
    recs += [
        rec("refused", "I'm sorry, but I can't help with that.", stop="refusal"),
        rec("refused-text", "I cannot assist with writing a keylogger.", stop="end_turn"),
        rec("empty", "   \n", stop="end_turn"),
        rec("cut", answer("python", VALID["python"])[:60], stop="max_tokens"),
        rec("short", "Use sort.", task="explain"),
        rec("no-code", "You should loop over the list and add the numbers to a running total, then return it.",
            task="write"),
        rec("explain-ok", "A heap keeps the smallest element at the root; every push and pop costs O(log n).",
            task="explain"),
        rec("dup-a", answer("python", "def add(a, b):\n    return a + b\n")),
        rec("dup-b", answer("python", "def add(a, b):\n    return a + b\n").replace(" the ", "  the\t")),  # whitespace only
        rec("near-a", answer("python", "def mul(a, b):\n    return a * b\n",
                             " ".join(f"word{i}" for i in range(120)))),
        rec("near-b", answer("python", "def mul(a, b):\n    return a * b\n",
                             " ".join(f"word{i}" for i in range(120)) + " extra")),
    ]
    return recs


def test_filter_report_counts_each_kind_and_adds_up():
    kept, report = filter_records(corpus())
    r = report["removed"]
    assert r["syntax_error"] == 6
    assert report["syntax"]["records_failing_by_language"] == {k: 1 for k in VALID}
    assert r["refusal"] == 2 and r["empty"] == 1 and r["truncated"] == 1 and r["too_short"] == 1
    assert r["no_code_block"] == 1 and r["exact_duplicate"] == 1 and r["near_duplicate"] == 1
    assert report["kept"] + report["removed_total"] == report["input_records"] == len(corpus())
    ids = {k["prompt_id"] for k in kept}
    assert ids == {f"ok-{lang}" for lang in VALID} | {"explain-ok", "dup-a", "near-a"}
    text = format_report(report)
    assert "syntax_error" in text and "near_duplicate" in text and "python=1" in text


def test_near_duplicate_threshold_is_configurable():
    recs = [r for r in corpus() if r["prompt_id"].startswith("near")]
    assert filter_records(recs)[1]["removed"]["near_duplicate"] == 1
    off = filter_records(recs, {"near_dedup": {"threshold": 0.999}})[1]
    assert off["removed"]["near_duplicate"] == 0


def test_unknown_filter_key_is_named():
    with pytest.raises(KeyError, match="filters.near_dedup: unknown keys"):
        filter_records([], {"near_dedup": {"treshold": 0.5}})


GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
LOOP = "def add(a, b):\n    while True:\n        pass\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_self_consistency_keeps_the_sample_that_passes_the_prompt_tests():
    group = [rec("p", answer("python", WRONG), idx=0, tests=TESTS),
             rec("p", answer("python", LOOP) + " longer", idx=1, tests=TESTS),
             rec("p", answer("python", GOOD) + " the longest answer of all three", idx=2, tests=TESTS),
             rec("p", answer("python", GOOD) + " longer still, and also correct, but wordier", idx=3, tests=TESTS)]
    ranked = rank_samples(group, timeout_s=2.0)
    assert [r.record["sample_idx"] for r in ranked][:2] == [2, 3]  # passing first, then shorter
    assert ranked[0].tests.status == "passed"
    assert {r.tests.status for r in ranked[2:]} == {"failed", "timeout"}
    kept, report = filter_records(group, {"consistency": {"timeout_s": 2.0}})
    assert [k["sample_idx"] for k in kept] == [2]
    assert report["removed"]["not_best_sample"] == 3
    assert report["tests"] == {"failed": 1, "passed": 2, "timeout": 1}


def test_syntax_outranks_length_and_answer_carried_tests_count():
    with_tests = answer("python", GOOD + "\n\ndef test_add():\n    assert add(1, 1) == 2\n")
    failing = answer("python", WRONG + "\n\ndef test_add():\n    assert add(1, 1) == 2\n")
    assert evaluate_answer(with_tests, {}).status == "passed"
    assert evaluate_answer(failing, {}).status == "failed"
    assert evaluate_answer(answer("python", GOOD), {}).status == "none"
    group = [rec("q", answer("python", BROKEN["python"]), idx=0), rec("q", with_tests + " x" * 50, idx=1),
             rec("q", failing, idx=2)]
    ranked = rank_samples(group)
    assert [r.record["sample_idx"] for r in ranked] == [1, 2, 0]


def test_write_tests_answers_run_against_the_shipped_reference():
    meta = {"language": "python", "setup_code": GOOD}
    tests_only = answer("python", "from solution import add\n\ndef test_add():\n    assert add(2, 2) == 4\n")
    assert evaluate_answer(tests_only, meta).status == "passed"
    assert evaluate_answer(tests_only, {**meta, "setup_code": WRONG}).status == "failed"


def test_tests_run_without_secrets_in_the_environment(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    assert "ANTHROPIC_API_KEY" not in sandbox_env() and "GITHUB_TOKEN" not in sandbox_env()
    probe = answer("python", "import os\nassert not [k for k in os.environ if 'KEY' in k or 'TOKEN' in k]\n")
    assert evaluate_answer(probe, {}).status == "passed"


def test_filter_file_writes_training_records_and_report(tmp_path):
    src = tmp_path / "results.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in corpus()))
    report = filter_file(src, tmp_path / "filtered.jsonl", tmp_path / "filter_report.json")
    out = [json.loads(x) for x in (tmp_path / "filtered.jsonl").read_text().splitlines()]
    assert len(out) == report["kept"] == 9
    assert set(out[0]) >= {"id", "prompt", "completion", "meta"}
    assert json.loads((tmp_path / "filter_report.json").read_text())["removed"]["syntax_error"] == 6
    with pytest.raises(FileNotFoundError, match="run the generate stage first"):
        filter_file(tmp_path / "nope.jsonl", tmp_path / "f.jsonl")
