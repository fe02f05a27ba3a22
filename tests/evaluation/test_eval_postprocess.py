"""Completion post-processing for base (completion) and chat models."""

from __future__ import annotations

from distill.evaluation.benchmarks import load_humaneval
from distill.evaluation.postprocess import (extract_code, make_completion, strip_prompt_echo,
                                            truncate_at_stop)

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'


def test_truncate_at_earliest_stop():
    text = "    return sum(xs)\n\nprint(total([1]))\ndef other():\n"
    assert truncate_at_stop(text, ["\ndef", "\nprint"]) == "    return sum(xs)\n"
    assert truncate_at_stop("abc", None) == "abc"
    assert truncate_at_stop("abc", ["", "zz"]) == "abc"


def test_extract_code_prefers_the_block_defining_the_entry_point():
    answer = ("Here you go:\n```text\nnot code\n```\n```python\nimport math\n```\n"
              "```python\ndef total(xs):\n    return sum(xs)\n```\nDone.")
    assert extract_code(answer, "total") == "def total(xs):\n    return sum(xs)"
    assert extract_code("```py\nx = 1\n```", None) == "x = 1"
    assert extract_code("def f():\n    return 1\n", "f") == "def f():\n    return 1"
    # an answer cut off by the token budget: the unterminated fence still counts
    assert extract_code("```python\ndef total(xs):\n    return 0", "total").startswith("def total")


def test_completion_style_keeps_the_prompt_signature():
    raw = "    return sum(xs)\n\n\ndef main():\n    pass\n"
    comp = make_completion(raw, PROMPT, "completion", ["\ndef", "\nif"], "total")
    assert comp == "    return sum(xs)\n\n"
    assert strip_prompt_echo(PROMPT + "    return 0\n", PROMPT) == "    return 0\n"
    assert make_completion(PROMPT + "    return 0\n", PROMPT, "completion", []) == "    return 0\n"


def test_chat_style_full_function_is_appended_after_the_prompt(sandbox):
    bench = load_humaneval()
    task = bench.tasks[0]
    body = task.reference
    answer = ("Sure!\n```python\nfrom typing import List\n\n"
              "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
              + body + "```\nThis works because ...")
    comp = make_completion(answer, task.prompt, "chat", None, task.entry_point)
    assert comp.startswith("\nfrom typing import List")
    assert sandbox.run(task.program(comp)).passed


def test_chat_style_bare_body_continues_the_prompt(sandbox):
    task = load_humaneval().tasks[0]
    answer = "```python\n" + task.reference + "```"
    comp = make_completion(answer, task.prompt, "chat", None, task.entry_point)
    assert sandbox.run(task.program(comp)).passed


def test_wrong_solutions_fail(sandbox):
    bench = load_humaneval().select(limit=6)
    results = sandbox.map([t.program("    return None\n") for t in bench.tasks])
    assert not any(r.passed for r in results)
