"""Prompt rendering: a seeded, reproducible coding prompt set from a config mapping.

Why generated rather than hand-written: a distillation set wants thousands of varied prompts whose
*mix* (task types, languages, difficulty) is a deliberate, tunable choice, and the same config and
seed must always yield the same prompts so a rerun can resume against the results already paid for.

Four families, mixed by ``proportions``, drawn from the :mod:`~distill.teacher_data.catalogue`:

* ``base`` - the shipped real tasks crossed with task types, languages and *modifiers*.
* ``algorithms`` - algorithms x variants (iterative, recursive, generic, ...).
* ``data_structures`` - data structures x operations.
* ``code_files`` - functions cut out of a real source tree (:mod:`~distill.teacher_data.code_files`),
  with a planted bug for "fix" prompts (:mod:`~distill.teacher_data.bugs`).

``response_format: rationale`` appends the instruction of :mod:`~distill.teacher_data.rationale`,
so the teacher reasons first and answers second in a form the parser can split.
"""

from __future__ import annotations

import logging
import random
import sysconfig
from typing import Any, Mapping

from distill.teacher_data.bugs import plant_bug
from distill.teacher_data.catalogue import (
    ALGORITHM_VARIANTS, ALGORITHMS, CODE_TASK_TYPES, CODE_TEMPLATES, DATA_STRUCTURE_OPERATIONS, DATA_STRUCTURES,
    DIFFICULTIES, DIFFICULTY_HINT, DOC_STYLE, FAMILIES, FENCE, LANG_NAME, LANGUAGES, MODIFIERS, TASK_TYPES,
    TEMPLATES, TEST_FRAMEWORK, load_base_tasks,
)
from distill.teacher_data.code_files import extract_functions
from distill.teacher_data.mix import pick, quota, weights
from distill.teacher_data.promptset import Prompt
from distill.teacher_data.rationale import RESPONSE_FORMATS, with_response_format

log = logging.getLogger(__name__)

__all__ = ["CODE_TASK_TYPES", "PromptGenerator", "generate_prompts"]


def _fmt(template: str, lang: str, **kw: Any) -> str:
    return template.format(lang=LANG_NAME[lang], test_framework=TEST_FRAMEWORK[lang], doc_style=DOC_STYLE[lang], **kw)


def _fenced(code: str, lang: str) -> str:
    return f"```{FENCE[lang]}\n{code.rstrip()}\n```"


class PromptGenerator:
    """Builds a prompt set from a config mapping (``conf/teacher_data/prompts/*.yaml``)."""

    def __init__(self, cfg: Mapping[str, Any]):
        cfg = dict(cfg)
        self.cfg = cfg
        self.seed = int(cfg.get("seed", 0))
        self.num_prompts = int(cfg.get("num_prompts", 100))
        self.families = weights(cfg.get("proportions"), FAMILIES, "proportions")
        self.task_types = weights(cfg.get("task_types"), TASK_TYPES, "task_types")
        self.languages = weights(cfg.get("languages"), LANGUAGES, "languages")
        self.difficulties = weights(cfg.get("difficulties"), DIFFICULTIES, "difficulties")
        mod = dict(cfg.get("modifiers") or {})
        self.modifier_prob = float(mod.get("probability", 0.5))
        self.max_modifiers = int(mod.get("max_per_prompt", 2))
        self.modifier_weights = weights(mod.get("weights"), MODIFIERS, "modifiers.weights")
        self.show_signature = bool(cfg.get("show_signature", True))
        self.show_tests = bool(cfg.get("show_tests", False))
        self.system_prompt = cfg.get("system_prompt")
        self.response_format = str(cfg.get("response_format") or "plain")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"prompts.response_format must be one of {RESPONSE_FORMATS}, "
                             f"got {self.response_format!r}")
        self._tasks = None
        self._functions = None

    # lazily: a run that uses only programmatic families never reads files
    @property
    def tasks(self) -> list[dict]:
        if self._tasks is None:
            self._tasks = load_base_tasks(self.cfg.get("base_tasks"))
        return self._tasks

    @property
    def functions(self) -> list[dict]:
        if self._functions is None:
            cf = dict(self.cfg.get("code_files") or {})
            root = cf.get("root") or sysconfig.get_paths()["stdlib"]
            self._functions = extract_functions(
                root, languages=[lang for lang in self.languages] if cf.get("match_languages", False) else LANGUAGES,
                min_lines=int(cf.get("min_lines", 5)), max_lines=int(cf.get("max_lines", 60)),
                max_files=int(cf.get("max_files", 200)), seed=self.seed)
            if not self._functions:
                raise ValueError(f"prompts.code_files.root={root}: no functions of "
                                 f"{cf.get('min_lines', 5)}-{cf.get('max_lines', 60)} lines found")
        return self._functions

    def _modifiers(self, rng: random.Random, task_type: str) -> list[str]:
        if task_type not in ("write", "fix_bug", "refactor") or rng.random() >= self.modifier_prob:
            return []
        k = rng.randint(1, max(1, self.max_modifiers))
        pool = dict(self.modifier_weights)
        chosen = []
        while pool and len(chosen) < k:
            m = pick(rng, pool)
            chosen.append(m)
            pool.pop(m)
        return sorted(chosen)

    def _finish(self, text: str, lang: str, difficulty: str, modifiers: list[str], with_hint: bool) -> str:
        parts = [text]
        if with_hint and DIFFICULTY_HINT[difficulty]:
            parts.append(DIFFICULTY_HINT[difficulty])
        parts += [_fmt(MODIFIERS[m], lang) for m in modifiers]
        return "\n\n".join(parts) if any("\n" in p for p in parts) else " ".join(parts)

    def _base(self, rng, task_type, lang, difficulty) -> Prompt:
        pool = [t for t in self.tasks if t.get("difficulty", "medium") == difficulty] or self.tasks
        t = pool[rng.randrange(len(pool))]
        mods = self._modifiers(rng, task_type)
        entry = t.get("signature", "").split("(")[0].replace("class ", "").strip() or None
        tests = setup = None
        code = t.get("reference") if lang == "python" and task_type in CODE_TEMPLATES else None
        if code and task_type == "fix_bug":
            bug = plant_bug(code, rng)
            code = bug[0] if bug else None
        if code:
            # The prompt carries the reference (or a bugged copy): the answer is checked against the
            # task's asserts, or, for tests the teacher writes, run against the correct reference.
            body = _fmt(CODE_TEMPLATES[task_type], lang, origin="code", code=_fenced(code, lang),
                        purpose=t["description"])
            if task_type in ("fix_bug", "refactor", "document"):
                tests = t.get("tests")
            elif task_type == "write_tests":
                setup = t["reference"]
        else:
            subject = f"a function that {t['description']}"
            if lang == "python" and self.show_signature and t.get("signature"):
                subject = f"`{t['signature']}`, which {t['description']}"
                if task_type in ("write", "fix_bug", "refactor", "document") and t.get("tests"):
                    tests = t["tests"]
                    if self.show_tests:
                        body_tests = "\n\nIt must pass these checks:\n" + _fenced(tests, "python")
            body = _fmt(TEMPLATES[task_type], lang, subject=subject)
            if tests and self.show_tests:
                body += body_tests
        text = self._finish(body, lang, difficulty, mods, with_hint=False)
        return Prompt(text, "base", task_type, lang, t.get("difficulty", difficulty), mods, t["name"], tests,
                      entry if (tests or setup) else None, setup)

    def _algorithm(self, rng, task_type, lang, difficulty) -> Prompt:
        alg, var = rng.choice(ALGORITHMS), rng.choice(ALGORITHM_VARIANTS)
        mods = self._modifiers(rng, task_type)
        body = _fmt(TEMPLATES[task_type], lang, subject=f"{alg} {var}")
        return Prompt(self._finish(body, lang, difficulty, mods, True), "algorithms", task_type, lang, difficulty,
                      mods, f"{alg}|{var}")

    def _data_structure(self, rng, task_type, lang, difficulty) -> Prompt:
        ds, op = rng.choice(DATA_STRUCTURES), rng.choice(DATA_STRUCTURE_OPERATIONS)
        mods = self._modifiers(rng, task_type)
        body = _fmt(TEMPLATES[task_type], lang, subject=f"a {ds} that supports {op}")
        return Prompt(self._finish(body, lang, difficulty, mods, True), "data_structures", task_type, lang,
                      difficulty, mods, f"{ds}|{op}")

    def _code_file(self, rng, task_type, lang, difficulty) -> Prompt:
        funcs = self.functions
        same_lang = [f for f in funcs if f["language"] == lang]
        f = rng.choice(same_lang or funcs)
        lang = f["language"]
        if task_type not in CODE_TEMPLATES:  # "write" has no code-carrying form: explain it instead
            task_type = "explain"
        code = f["code"]
        purpose = f"behave as its name `{f['name']}` and its documentation describe"
        if task_type == "fix_bug":
            bug = plant_bug(code, rng) if lang == "python" else None
            if bug is None:
                task_type = "refactor"
            else:
                code = bug[0]
        diff = "easy" if f["lines"] <= 12 else "medium" if f["lines"] <= 30 else "hard"
        origin = f"function `{f['name']}` from `{f['path']}`"
        body = _fmt(CODE_TEMPLATES[task_type], lang, origin=origin, code=_fenced(code, lang), purpose=purpose)
        return Prompt(body, "code_files", task_type, lang, diff, [], f"{f['path']}::{f['name']}")

    def generate(self) -> list[Prompt]:
        """``num_prompts`` distinct prompts; the family mix follows ``proportions`` exactly."""
        rng = random.Random(self.seed)
        builders = {"base": self._base, "algorithms": self._algorithm, "data_structures": self._data_structure,
                    "code_files": self._code_file}
        out: dict[str, Prompt] = {}
        for family, count in sorted(quota(self.num_prompts, self.families).items()):
            # Task types get exact quotas too; languages and difficulty are drawn per prompt.
            slots = [t for t, c in sorted(quota(count, self.task_types).items()) for _ in range(c)]
            rng.shuffle(slots)
            made = 0
            for task_type in slots:
                for attempt in range(60):
                    # A combination whose space is used up (few tasks x one language) yields
                    # repeats; after 30 tries let the task type vary rather than stall.
                    tt = task_type if attempt < 30 else pick(rng, self.task_types)
                    p = builders[family](rng, tt, pick(rng, self.languages), pick(rng, self.difficulties))
                    p = with_response_format(p, self.response_format)
                    if p.id not in out:
                        out[p.id] = p
                        made += 1
                        break
            if made < count:
                log.warning("prompts: family %r yielded only %d distinct prompts of %d requested (its space is "
                            "exhausted for this config)", family, made, count)
        prompts = list(out.values())
        random.Random(self.seed + 1).shuffle(prompts)
        return prompts


def generate_prompts(cfg: Mapping[str, Any]) -> list[Prompt]:
    return PromptGenerator(cfg).generate()

