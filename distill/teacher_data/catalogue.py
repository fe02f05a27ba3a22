"""The task catalogue: what a coding prompt can be about and how each kind is phrased.

Languages, task types, difficulties and the four prompt families; the phrasing templates and
modifiers; the algorithm and data-structure subjects; and the shipped base tasks
(``data/base_tasks.json``, each with a Python reference solution and asserts). Data only - turning
it into prompts is :mod:`distill.teacher_data.prompts`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

