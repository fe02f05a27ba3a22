"""Prompt sets: shipped tasks, mixes and proportions, stable ids, prompts from real code files."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from distill.teacher_data.consistency import run_python_tests
from distill.teacher_data.bugs import plant_bug
from distill.teacher_data.catalogue import LANGUAGES, MODIFIERS, load_base_tasks
from distill.teacher_data.code_files import extract_functions
from distill.teacher_data.prompts import generate_prompts
from distill.teacher_data.promptset import Prompt, prompt_id, read_prompts, write_prompts

NO_FILES = {"base": 0.4, "algorithms": 0.3, "data_structures": 0.3, "code_files": 0.0}
NO_FILES_CFG = {"seed": 1, "num_prompts": 20, "proportions": NO_FILES}


def test_shipped_base_tasks_are_many_varied_and_their_references_pass_their_tests():
    tasks = load_base_tasks()
    assert len(tasks) >= 30
    assert len({t["name"] for t in tasks}) == len(tasks)
    assert len({t["category"] for t in tasks}) >= 10
    assert {t["difficulty"] for t in tasks} == {"easy", "medium", "hard"}
    for t in tasks:  # in-process: shipped code, and fast
        ns: dict = {}
        exec(t["reference"], ns)
        exec(t["tests"], ns)
    # ...and through the sandboxed runner the filters use, for a sample
    for t in random.Random(0).sample(tasks, 3):
        assert run_python_tests(t["reference"], t["tests"]).status == "passed", t["name"]


def test_same_config_same_prompts_and_ids_other_seed_differs():
    cfg = {"num_prompts": 60, "seed": 3, "proportions": NO_FILES}
    a, b = generate_prompts(cfg), generate_prompts(cfg)
    assert [p.id for p in a] == [p.id for p in b] and [p.text for p in a] == [p.text for p in b]
    assert len({p.id for p in a}) == 60
    c = generate_prompts({**cfg, "seed": 4})
    assert {p.id for p in a} != {p.id for p in c}


def test_id_is_a_hash_of_content_and_settings():
    p = Prompt("Write X", "base", "write", "python", "easy")
    assert p.id == prompt_id("Write X", p.settings()) and len(p.id) == 16
    assert Prompt("Write X", "base", "write", "go", "easy").id != p.id
    assert Prompt("Write Y", "base", "write", "python", "easy").id != p.id


def test_family_proportions_are_exact_and_other_mixes_follow_weights():
    cfg = {"num_prompts": 400, "seed": 0, "proportions": {"base": 2, "algorithms": 1, "data_structures": 1},
           "languages": {"python": 0.5, "rust": 0.5}, "difficulties": {"hard": 1.0},
           "task_types": {"write": 3, "explain": 1}}
    ps = generate_prompts(cfg)
    fam = Counter(p.family for p in ps)
    assert fam == {"base": 200, "algorithms": 100, "data_structures": 100}
    assert set(p.language for p in ps) == {"python", "rust"}
    assert 0.4 < Counter(p.language for p in ps)["python"] / 400 < 0.6
    assert all(p.difficulty == "hard" for p in ps if p.family != "base")
    tt = Counter(p.task_type for p in ps)
    assert 0.65 < tt["write"] / 400 < 0.85 and set(tt) == {"write", "explain"}


def test_every_dimension_is_reachable():
    ps = generate_prompts({"num_prompts": 600, "seed": 1, "proportions": NO_FILES,
                           "modifiers": {"probability": 1.0, "max_per_prompt": 3}})
    assert {p.language for p in ps} == set(LANGUAGES)
    assert {p.task_type for p in ps} == {"write", "explain", "fix_bug", "refactor", "write_tests", "document"}
    assert {m for p in ps for m in p.modifiers} == set(MODIFIERS)
    assert {p.difficulty for p in ps} == {"easy", "medium", "hard"}
    joined = "\n".join(p.text for p in ps)
    for lang in ("Python", "JavaScript", "Java", "C++", "Go", "Rust"):
        assert f" {lang} " in joined
    assert "Validate the inputs" in joined and "time and space complexity" in joined
    # Python base prompts that name the function carry the task's asserts for later checking.
    with_tests = [p for p in ps if p.tests]
    assert with_tests and all(p.language == "python" and p.entry_point for p in with_tests)


def test_unknown_keys_in_proportions_are_named():
    with pytest.raises(ValueError, match=r"prompts.languages: unknown \['kotlin'\]"):
        generate_prompts({"num_prompts": 5, "languages": {"kotlin": 1}})


def test_plant_bug_changes_behaviour():
    t = next(t for t in load_base_tasks() if t["name"] == "binary_search_first")
    outcomes = []
    for seed in range(5):  # in the sandbox: a planted bug can well be an infinite loop
        buggy, _ = plant_bug(t["reference"], random.Random(seed))
        assert buggy != t["reference"]
        outcomes.append(run_python_tests(buggy, t["tests"], timeout_s=1.0).status)
    assert sum(o in ("failed", "timeout") for o in outcomes) >= 3, outcomes


CODE = {
    "util.py": "import os\n\n\nclass Box:\n    def area(self, w, h):\n        if w < 0 or h < 0:\n"
               "            raise ValueError('negative')\n        total = w * h\n        return total\n\n\n"
               "def tiny():\n    return 1\n",
    "web/app.js": "function clamp(x, lo, hi) {\n  if (x < lo) return lo;\n  if (x > hi) return hi;\n"
                  "  const y = x;\n  return y;\n}\n",
    "Main.java": "class Main {\n  static int twice(int x) {\n    int y = x;\n    y = y * 2;\n"
                 "    System.out.println(y);\n    return y;\n  }\n}\n",
    "lib.cpp": "#include <vector>\nint sum(const std::vector<int>& v) {\n  int s = 0;\n  for (int x : v) {\n"
               "    s += x;\n  }\n  return s;\n}\n",
    "main.go": "package main\n\nfunc Max(a, b int) int {\n\tif a > b {\n\t\treturn a\n\t}\n\treturn b\n}\n",
    "src/lib.rs": "pub fn fact(n: u64) -> u64 {\n    let mut acc = 1;\n    for i in 1..=n {\n        acc *= i;\n"
                  "    }\n    acc\n}\n",
    "tests/test_util.py": "def test_area():\n    x = 1\n    y = 2\n    z = 3\n    assert x + y == z\n",
}


def test_prompts_from_a_real_source_tree_in_six_languages(tmp_path):
    for rel, text in CODE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    funcs = extract_functions(tmp_path, min_lines=5, max_lines=40)
    got = {(f["language"], f["name"]) for f in funcs}
    assert got == {("python", "area"), ("javascript", "clamp"), ("java", "twice"), ("cpp", "sum"),
                   ("go", "Max"), ("rust", "fact")}  # tiny() too short, test files skipped
    area = next(f for f in funcs if f["name"] == "area")
    assert area["code"].startswith("def area(self, w, h):\n    if w < 0")  # re-indented method
    ps = generate_prompts({"num_prompts": 40, "seed": 0, "proportions": {"code_files": 1},
                           "code_files": {"root": str(tmp_path), "min_lines": 5}})
    assert {p.family for p in ps} == {"code_files"}
    assert {p.language for p in ps} == set(LANGUAGES)
    assert {p.task_type for p in ps} <= {"explain", "document", "write_tests", "refactor", "fix_bug"}
    p = next(p for p in ps if p.language == "rust")
    assert "`src/lib.rs`" in p.text and "```rust\npub fn fact" in p.text and p.source == "src/lib.rs::fact"


def test_missing_source_tree_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts.code_files.root"):
        generate_prompts({"num_prompts": 3, "proportions": {"code_files": 1},
                          "code_files": {"root": str(tmp_path / "nope")}})


def test_prompt_files_round_trip_and_accept_plain_prompt_files(tmp_path):
    ps = generate_prompts({"num_prompts": 10, "proportions": NO_FILES})
    write_prompts(ps, tmp_path / "p.jsonl")
    back = read_prompts(tmp_path / "p.jsonl")
    assert [p.to_dict() for p in back] == [p.to_dict() for p in ps]
    (tmp_path / "mine.jsonl").write_text('{"prompt": "Write a Go HTTP server"}\n')
    (mine,) = read_prompts(tmp_path / "mine.jsonl")
    assert mine.text == "Write a Go HTTP server" and len(mine.id) == 16


def test_default_preset_composes_and_uses_the_stdlib(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf_dir = str(Path(__file__).resolve().parents[2] / "conf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = compose("teacher_data", overrides=["prompts.num_prompts=40", "prompts.code_files.max_files=20"])
    ps = generate_prompts(OmegaConf.to_container(cfg.prompts, resolve=True))
    fam = Counter(p.family for p in ps)
    assert fam["code_files"] == 10 and fam["base"] == 16


@pytest.mark.parametrize("preset", ["default", "small", "python_only", "rationale"])
@pytest.mark.parametrize("client", ["default", "fast"])
def test_every_prompt_and_client_preset_composes(preset, client):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from distill.config import CONF_DIR
    from distill.api_client.ratelimit import limits_from_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("teacher_data", overrides=[f"teacher_data/prompts={preset}", f"teacher_data/client={client}"])
    limits = limits_from_config(dict(cfg.client))
    assert limits.requests_per_minute and limits.input_tokens_per_minute and limits.output_tokens_per_minute
    assert cfg.prompts.response_format == ("rationale" if preset == "rationale" else "plain")


def test_rationale_format_appends_the_instruction_and_leaves_plain_ids_alone():
    from distill.teacher_data.rationale import INSTRUCTION

    plain = generate_prompts({**NO_FILES_CFG, "response_format": "plain"})
    again = generate_prompts(NO_FILES_CFG)
    assert [p.id for p in plain] == [p.id for p in again]  # ids from before the option existed still hold
    rat = generate_prompts({**NO_FILES_CFG, "response_format": "rationale"})
    assert all(p.text.endswith(INSTRUCTION) and p.response_format == "rationale" for p in rat)
    assert not {p.id for p in rat} & {p.id for p in plain}  # a different request, a different id
    assert Prompt.from_dict(rat[0].to_dict()) == rat[0]
    with pytest.raises(ValueError, match="prompts.response_format must be one of"):
        generate_prompts({**NO_FILES_CFG, "response_format": "cot"})
