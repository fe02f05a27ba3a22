"""Coding prompt sets for API-teacher distillation, generated reproducibly from a seed.

Why generated rather than hand-written: a distillation set wants thousands of varied prompts whose
*mix* (task types, languages, difficulty) is a deliberate, tunable choice, and the same config and
seed must always yield the same prompts so a rerun can resume against the results already paid for.

Four families, mixed by ``proportions``:

* ``base`` - the shipped real tasks (``data/base_tasks.json``, each with a Python reference
  solution and asserts) crossed with task types, languages and *modifiers* (error handling, tests,
  complexity analysis, an alternative approach, step-by-step reasoning, production-ready).
* ``algorithms`` - algorithms x variants (iterative, recursive, generic, ...).
* ``data_structures`` - data structures x operations.
* ``code_files`` - functions cut out of a real source tree (explain / document / test / refactor /
  fix a planted bug), Python via :mod:`ast`, other languages via tree-sitter when installed.

Every prompt gets a stable ``id``: a hash of its text and the settings that shaped it, so the id
changes exactly when the request would.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).with_name("data")
LANGUAGES = ("python", "javascript", "java", "cpp", "go", "rust")
TASK_TYPES = ("write", "explain", "fix_bug", "refactor", "write_tests", "document")
DIFFICULTIES = ("easy", "medium", "hard")
FAMILIES = ("base", "algorithms", "data_structures", "code_files")
CODE_TASK_TYPES = frozenset({"write", "fix_bug", "refactor", "write_tests", "document"})

LANG_NAME = {"python": "Python", "javascript": "JavaScript", "java": "Java", "cpp": "C++", "go": "Go",
             "rust": "Rust"}
FENCE = {"python": "python", "javascript": "javascript", "java": "java", "cpp": "cpp", "go": "go", "rust": "rust"}
TEST_FRAMEWORK = {"python": "pytest", "javascript": "Jest", "java": "JUnit 5", "cpp": "GoogleTest",
                  "go": "the standard testing package", "rust": "#[test] functions in a tests module"}
DOC_STYLE = {"python": "Google-style docstrings", "javascript": "JSDoc", "java": "Javadoc", "cpp": "Doxygen",
             "go": "godoc", "rust": "rustdoc"}
EXTENSIONS = {".py": "python", ".js": "javascript", ".mjs": "javascript", ".java": "java", ".cpp": "cpp",
              ".cc": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".go": "go", ".rs": "rust"}

MODIFIERS = {
    "error_handling": "Validate the inputs and handle errors explicitly, with clear error messages for invalid input.",
    "tests": "Include unit tests ({test_framework}) that cover normal cases and edge cases.",
    "complexity": "State the time and space complexity of your solution and justify it.",
    "alternative": "After your solution, describe one alternative approach and compare the trade-offs.",
    "step_by_step": "Reason through the problem step by step before writing the code.",
    "production": ("Make it production-ready: idiomatic {lang}, type annotations where the language has them, "
                   "documentation comments, and no global state."),
}
DIFFICULTY_HINT = {
    "easy": "Keep the solution simple and readable; a beginner should be able to follow it.",
    "medium": "",
    "hard": "Handle every edge case and aim for the best possible time complexity.",
}

ALGORITHMS = (
    "binary search", "merge sort", "quicksort with a randomized pivot", "heap sort",
    "breadth-first search on a grid with obstacles", "depth-first search with cycle detection",
    "Dijkstra's shortest path algorithm", "topological sort (Kahn's algorithm)", "union-find with path compression",
    "Knuth-Morris-Pratt string matching", "longest common subsequence", "0/1 knapsack", "edit distance",
    "Kruskal's minimum spanning tree", "Floyd-Warshall all-pairs shortest paths", "reservoir sampling",
    "sliding-window maximum", "fast Fibonacci by matrix exponentiation", "the sieve of Eratosthenes",
    "Bellman-Ford shortest paths with negative-cycle detection", "A* search on a grid", "counting sort",
    "binary exponentiation modulo m", "greedy interval scheduling",
)
ALGORITHM_VARIANTS = (
    "as an iterative implementation", "as a recursive implementation", "generic over the element type",
    "with early termination when the answer is known", "returning the full witness (path, indices or items), not just the value",
    "using O(1) extra space where the algorithm allows it", "instrumented to count the basic operations it performs",
    "processing input that arrives as a stream",
)
DATA_STRUCTURES = (
    "singly linked list", "doubly linked list", "stack", "queue built from two stacks", "circular buffer",
    "binary search tree", "AVL tree", "binary min-heap", "trie", "hash map with separate chaining", "LRU cache",
    "disjoint-set forest", "graph stored as an adjacency list", "skip list", "segment tree", "Fenwick tree",
    "Bloom filter", "double-ended queue",
)
DATA_STRUCTURE_OPERATIONS = (
    "insertion", "deletion", "search", "in-order iteration", "serialization to and from a string",
    "merging two instances", "thread-safe concurrent access", "O(1) size and emptiness queries",
    "automatic resizing", "range queries",
)

TEMPLATES = {
    "write": "Write {lang} code for {subject}.",
    "explain": "Explain, step by step, how to implement {subject}, and illustrate it with a short {lang} implementation.",
    "fix_bug": ("A {lang} implementation of {subject} passes simple tests but fails on edge cases. Identify the "
                "bugs such code typically has (off-by-one errors, empty input, overflow, aliasing) and write a "
                "corrected {lang} implementation with each fix marked in a comment."),
    "refactor": ("Write a naive {lang} implementation of {subject}, then refactor it into clean, idiomatic {lang} "
                 "and explain each change."),
    "write_tests": ("Write thorough unit tests using {test_framework}, covering edge cases, together with a {lang} "
                    "implementation of {subject}."),
    "document": "Write a fully documented ({doc_style}) {lang} implementation of {subject}.",
}
CODE_TEMPLATES = {  # prompts that carry a piece of code
    "explain": "Explain what the following {lang} {origin} does, how it works and what its edge cases are.\n\n{code}",
    "document": ("Add complete documentation to the following {lang} {origin} ({doc_style}) without changing its "
                 "behaviour, and show a short usage example.\n\n{code}"),
    "write_tests": "Write thorough unit tests using {test_framework} for the following {lang} {origin}.\n\n{code}",
    "refactor": ("Refactor the following {lang} {origin} for readability and maintainability without changing its "
                 "behaviour. Show the final code and explain each change.\n\n{code}"),
    "fix_bug": ("The following {lang} {origin} is supposed to {purpose}, but it contains a bug. Find the bug, "
                "explain why it is wrong, and give the corrected code.\n\n{code}"),
}


@dataclass
class Prompt:
    """One request to the teacher. ``meta`` drives filtering (language, task type, tests)."""

    text: str
    family: str
    task_type: str
    language: str
    difficulty: str
    modifiers: list[str] = field(default_factory=list)
    source: str = ""           # base task name, "algorithm|variant", or "path::function"
    tests: str | None = None   # Python asserts the answer should pass (base tasks in Python)
    entry_point: str | None = None
    setup_code: str | None = None  # code run before the answer's own tests (e.g. the reference)
    id: str = ""

    def __post_init__(self):
        if not self.id:
            self.id = prompt_id(self.text, self.settings())

    def settings(self) -> dict[str, Any]:
        return {"family": self.family, "task_type": self.task_type, "language": self.language,
                "difficulty": self.difficulty, "modifiers": sorted(self.modifiers), "source": self.source,
                "tests": self.tests}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Prompt":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})


def prompt_id(text: str, settings: Mapping[str, Any] | None = None) -> str:
    """16 hex chars of SHA-256 over the text and its settings (canonical JSON): stable across runs."""
    blob = json.dumps({"text": text, "settings": dict(settings or {})}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_base_tasks(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The shipped base tasks, or a user file of the same format (``{"tasks": [...]}`` or a list)."""
    p = Path(path) if path else DATA_DIR / "base_tasks.json"
    if not p.is_file():
        raise FileNotFoundError(f"prompts.base_tasks: file {p} does not exist")
    data = json.loads(p.read_text(encoding="utf-8"))
    tasks = data["tasks"] if isinstance(data, dict) else data
    for i, t in enumerate(tasks):
        for k in ("name", "description"):
            if k not in t:
                raise ValueError(f"{p}: task #{i} lacks the required key {k!r}")
    return tasks


# --------------------------------------------------------------------------------------------
# Weighted choices
# --------------------------------------------------------------------------------------------
def _weights(spec: Any, universe: Iterable[str], what: str) -> dict[str, float]:
    """Normalise a proportions spec: a mapping name->weight, or a list (equal weights)."""
    universe = tuple(universe)
    if spec is None:
        spec = {k: 1.0 for k in universe}
    elif isinstance(spec, (list, tuple)):
        spec = {k: 1.0 for k in spec}
    spec = {str(k): float(v) for k, v in dict(spec).items()}
    unknown = sorted(set(spec) - set(universe))
    if unknown:
        raise ValueError(f"prompts.{what}: unknown {unknown}; choose from {list(universe)}")
    if any(v < 0 for v in spec.values()) or sum(spec.values()) <= 0:
        raise ValueError(f"prompts.{what}: weights must be >= 0 and not all zero, got {spec}")
    return {k: v for k, v in spec.items() if v > 0}


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    keys = sorted(weights)  # sorted: the draw must not depend on dict order from the config
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def _quota(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder), so small sets
    still get the configured mix instead of whatever a random draw happens to give."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Planting bugs in Python code (for "fix a bug" prompts that carry real code)
# --------------------------------------------------------------------------------------------
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.FloorDiv: ast.Mult}


def plant_bug(source: str, rng: random.Random) -> tuple[str, str] | None:
    """Return ``(buggy_source, description)`` with one plausible bug, or None if there is no site.

    The mutations are the classic ones reviewers miss: a boundary comparison (``<`` vs ``<=``), a
    flipped arithmetic operator and an off-by-one integer constant.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _CMP_SWAP:
                    sites.append(("cmp", node, i))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            sites.append(("bin", node, None))
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value in (0, 1, 2):
            sites.append(("const", node, None))
    if not sites:
        return None
    kind, node, i = sites[rng.randrange(len(sites))]
    if kind == "cmp":
        node.ops[i] = _CMP_SWAP[type(node.ops[i])]()
        what = "comparison"
    elif kind == "bin":
        node.op = _BIN_SWAP[type(node.op)]()
        what = "arithmetic operator"
    else:
        node.value = node.value + 1
        what = "constant"
    buggy = ast.unparse(tree)
    return (buggy, what) if buggy != ast.unparse(ast.parse(source)) else None


# --------------------------------------------------------------------------------------------
# Functions from real source files
# --------------------------------------------------------------------------------------------
_TS_FUNCTION_NODES = {
    "javascript": {"function_declaration", "method_definition"},
    "java": {"method_declaration", "constructor_declaration"},
    "cpp": {"function_definition"},
    "go": {"function_declaration", "method_declaration"},
    "rust": {"function_item"},
}


def _python_functions(text: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            seg = lines[start - 1:node.end_lineno]
            pad = node.col_offset  # re-indent methods so the snippet parses on its own
            seg = [ln[pad:] if ln[:pad].strip() == "" else ln for ln in seg]
            out.append((node.name, "\n".join(seg)))
    return out


def _ts_functions(text: str, language: str) -> list[tuple[str, str]]:
    from distill.teachers.api.syntax import ts_parser

    parser = ts_parser(language)
    if parser is None:
        return []
    data = text.encode("utf-8")
    tree = parser.parse(data)
    out = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in _TS_FUNCTION_NODES[language] and not node.has_error:
            name_node = node.child_by_field_name("name")
            if name_node is None:
                decl = node.child_by_field_name("declarator")
                while decl is not None and decl.child_by_field_name("declarator") is not None:
                    decl = decl.child_by_field_name("declarator")
                name_node = decl
            name = data[name_node.start_byte:name_node.end_byte].decode("utf-8", "replace") if name_node else "function"
            out.append((name, data[node.start_byte:node.end_byte].decode("utf-8", "replace")))
        stack.extend(reversed(node.children))
    return out


def _is_test_path(rel: Path, exclude_dirs: set[str]) -> bool:
    """Skip vendored/build folders and test code: tests make poor "explain this function" material."""
    dirs = rel.parts[:-1]
    if any(d in exclude_dirs or "test" in d.lower() for d in dirs):
        return True
    name = rel.name.lower()
    return name.startswith("test_") or name.split(".")[0].endswith(("_test", "_tests", "test"))


def extract_functions(root: str | Path, *, languages: Iterable[str] = LANGUAGES, min_lines: int = 5,
                      max_lines: int = 60, max_files: int = 400,
                      exclude_dirs: Iterable[str] = ("__pycache__", "node_modules", ".git", "site-packages",
                                                     "vendor", "third_party", "build", "dist"),
                      seed: int = 0) -> list[dict]:
    """Functions of a source tree with ``min_lines..max_lines`` lines, in a deterministic order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prompts.code_files.root: folder {root} does not exist")
    langs = set(languages)
    excl = set(exclude_dirs)
    files = [p for p in sorted(root.rglob("*")) if p.suffix in EXTENSIONS and EXTENSIONS[p.suffix] in langs
             and p.is_file() and not _is_test_path(p.relative_to(root), excl)]
    if len(files) > max_files:  # an even, seeded sample of the tree, not its alphabetical head
        files = sorted(random.Random(seed).sample(files, max_files))
    out = []
    for p in files:
        lang = EXTENSIONS[p.suffix]
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        funcs = _python_functions(text) if lang == "python" else _ts_functions(text, lang)
        for name, code in funcs:
            n = code.count("\n") + 1
            if min_lines <= n <= max_lines:
                out.append({"path": p.relative_to(root).as_posix(), "name": name, "language": lang,
                            "code": code, "lines": n})
    return out


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------
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
        self.families = _weights(cfg.get("proportions"), FAMILIES, "proportions")
        self.task_types = _weights(cfg.get("task_types"), TASK_TYPES, "task_types")
        self.languages = _weights(cfg.get("languages"), LANGUAGES, "languages")
        self.difficulties = _weights(cfg.get("difficulties"), DIFFICULTIES, "difficulties")
        mod = dict(cfg.get("modifiers") or {})
        self.modifier_prob = float(mod.get("probability", 0.5))
        self.max_modifiers = int(mod.get("max_per_prompt", 2))
        self.modifier_weights = _weights(mod.get("weights"), MODIFIERS, "modifiers.weights")
        self.show_signature = bool(cfg.get("show_signature", True))
        self.show_tests = bool(cfg.get("show_tests", False))
        self.system_prompt = cfg.get("system_prompt")
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
            m = _pick(rng, pool)
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
        for family, count in sorted(_quota(self.num_prompts, self.families).items()):
            # Task types get exact quotas too; languages and difficulty are drawn per prompt.
            slots = [t for t, c in sorted(_quota(count, self.task_types).items()) for _ in range(c)]
            rng.shuffle(slots)
            made = 0
            for task_type in slots:
                for attempt in range(60):
                    # A combination whose space is used up (few tasks x one language) yields
                    # repeats; after 30 tries let the task type vary rather than stall.
                    tt = task_type if attempt < 30 else _pick(rng, self.task_types)
                    p = builders[family](rng, tt, _pick(rng, self.languages), _pick(rng, self.difficulties))
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


def write_prompts(prompts: list[Prompt], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a prompt file


def read_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if "text" not in d and "prompt" in d:  # accept a plain {"prompt": ...} file of the user's own
            d = {"text": d["prompt"], "family": d.get("family", "custom"), "task_type": d.get("task_type", "write"),
                 "language": d.get("language", "python"), "difficulty": d.get("difficulty", "medium"),
                 "tests": d.get("tests"), "entry_point": d.get("entry_point")}
        if "text" not in d:
            raise ValueError(f"{path}:{i}: a prompt needs a 'text' (or 'prompt') field")
        out.append(Prompt.from_dict(d))
    return out
