"""Quality control of teacher answers before they become training targets, with a counted report.

Sequence-level KD copies the teacher's answers verbatim, so every bad answer is a bad gradient:
a refusal teaches the student to refuse, a truncated answer to stop mid-function, a duplicate to
over-weight one pattern. Each record passes the filters in order and is counted once, under the
**first** filter that rejects it, so the report's numbers add up to the input size:

1. ``refusal``        - ``stop_reason == "refusal"`` or a refusal phrase at the start of the text
2. ``empty``          - nothing but whitespace
3. ``truncated``      - ``stop_reason`` ``max_tokens`` / ``model_context_window_exceeded``
4. ``too_short`` / ``too_long`` - character bounds
5. ``no_code_block``  - a code task (write, fix a bug, refactor, tests, document) without a fenced block
6. ``syntax_error``   - a fenced block in a known language that does not parse (per-language counts)
7. ``not_best_sample``/``tests_failed`` - self-consistency over the ``n`` samples of a prompt
8. ``exact_duplicate``/``near_duplicate`` - across the whole set (MinHash LSH, verified by Jaccard)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from distill.teachers.api.consistency import rank_samples
from distill.teachers.api.prompts import CODE_TASK_TYPES
from distill.teachers.api.store import read_jsonl
from distill.teachers.api.syntax import check_blocks, extract_code_blocks

log = logging.getLogger(__name__)

REFUSAL_PATTERNS = (
    r"^\W*(?:i'?m|i am) (?:sorry|afraid)\b[^.\n]{0,80}\b(?:can(?:no|')t|won'?t|unable|not able)\b",
    r"^\W*i apologi[sz]e\b[^.\n]{0,80}\b(?:can(?:no|')t|won'?t|unable|not able)\b",
    r"^\W*(?:i|we) (?:can(?:no|')t|won'?t|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:help|assist|provide|write|create|do|comply|fulfil)",
    r"^\W*as an ai\b",
    r"^\W*(?:sorry, )?(?:i|we) (?:must|have to) (?:decline|refuse)",
)
TRUNCATION_STOPS = ("max_tokens", "model_context_window_exceeded")
REASONS = ("refusal", "empty", "truncated", "too_short", "too_long", "no_code_block", "syntax_error",
           "tests_failed", "not_best_sample", "exact_duplicate", "near_duplicate")

DEFAULTS: dict[str, Any] = {
    "refusal": True, "refusal_patterns": list(REFUSAL_PATTERNS), "min_chars": 20, "max_chars": 30000,
    "require_code_block": True, "syntax": True, "check_untagged": False, "exact_dedup": True,
    "near_dedup": {"enabled": True, "threshold": 0.9, "num_perm": 64, "bands": 16, "shingle": 5,
                   "field": "completion"},
    "consistency": {"enabled": True, "run_tests": "auto", "timeout_s": 10.0, "prefer": "shorter", "workers": 2,
                    "require_tests_pass": False},
}


def _merge(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    out = json.loads(json.dumps(DEFAULTS))
    for k, v in dict(cfg or {}).items():
        if k not in out:
            raise KeyError(f"filters.{k} is not a known filter setting (known: {sorted(out)})")
        if isinstance(out[k], dict) and isinstance(v, Mapping):
            unknown = set(v) - set(out[k])
            if unknown:
                raise KeyError(f"filters.{k}: unknown keys {sorted(unknown)} (known: {sorted(out[k])})")
            out[k].update(dict(v))
        else:
            out[k] = v
    return out


def is_refusal(text: str, stop_reason: str | None, patterns: Iterable[str] = REFUSAL_PATTERNS) -> bool:
    if stop_reason == "refusal":
        return True
    head = (text or "").strip()[:300].lower().replace("\u2019", "'")
    return any(re.search(p, head) for p in patterns)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").strip()).lower()


# --------------------------------------------------------------------------------------------
# Near-duplicates: MinHash signatures + LSH banding, candidates verified by exact Jaccard
# --------------------------------------------------------------------------------------------
_MERSENNE = (1 << 31) - 1


def shingles(text: str, k: int = 5) -> set[int]:
    words = re.findall(r"\w+", (text or "").lower())
    grams = [" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))] if words else [""]
    # blake2b, not hash(): Python salts str hashes per process, and the filter must be reproducible.
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") & _MERSENNE
            for g in grams}


class MinHashLSH:
    def __init__(self, threshold: float = 0.9, num_perm: int = 64, bands: int = 16, seed: int = 1):
        if num_perm % bands:
            raise ValueError(f"filters.near_dedup: num_perm ({num_perm}) must be divisible by bands ({bands})")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.threshold, self.bands, self.rows = threshold, bands, num_perm // bands
        self.buckets: dict[tuple, list[int]] = defaultdict(list)
        self.sets: list[set[int]] = []

    def signature(self, sh: set[int]) -> np.ndarray:
        x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _MERSENNE).min(axis=1)

    def add_if_new(self, sh: set[int]) -> int | None:
        """Index ``sh`` unless a near-duplicate is indexed already; returns that one's index."""
        sig = self.signature(sh)
        keys = [(i, sig[i * self.rows:(i + 1) * self.rows].tobytes()) for i in range(self.bands)]
        seen = set()
        for key in keys:
            for j in self.buckets.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                other = self.sets[j]
                if len(sh & other) / max(1, len(sh | other)) >= self.threshold:
                    return j
        idx = len(self.sets)
        self.sets.append(sh)
        for key in keys:
            self.buckets[key].append(idx)
        return None


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
def _text(rec: Mapping[str, Any]) -> str:
    return rec.get("completion") or ""


def _first_reason(rec: dict[str, Any], cfg: dict[str, Any], syntax_stats: dict) -> str | None:
    text = _text(rec)
    meta = rec.get("meta") or {}
    if cfg["refusal"] and is_refusal(text, rec.get("stop_reason"), cfg["refusal_patterns"]):
        return "refusal"
    if not text.strip():
        return "empty"
    if rec.get("stop_reason") in TRUNCATION_STOPS:
        return "truncated"
    if len(text) < int(cfg["min_chars"]):
        return "too_short"
    if cfg["max_chars"] is not None and len(text) > int(cfg["max_chars"]):
        return "too_long"
    blocks = extract_code_blocks(text)
    if cfg["require_code_block"] and meta.get("task_type") in CODE_TASK_TYPES and not blocks:
        return "no_code_block"
    if cfg["syntax"] and blocks:
        res = check_blocks(blocks, meta.get("language"), bool(cfg["check_untagged"]))
        for b in blocks:
            if b.language:
                syntax_stats["checked"][b.language] += 1
        syntax_stats["unchecked"] += res["unchecked"]
        if res["failed"]:
            for lang in res["errors"]:
                syntax_stats["failed"][lang] += 1
            rec.setdefault("_qc", {})["syntax_error"] = res["errors"]
            return "syntax_error"
    return None


def filter_records(records: Iterable[dict[str, Any]], cfg: Mapping[str, Any] | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply every filter; returns ``(kept records, report)``. Input records are not modified."""
    cfg = _merge(cfg)
    records = [dict(r) for r in records]
    # Fixed order (prompt, sample): which duplicate survives must not depend on arrival order.
    records.sort(key=lambda r: (str(r.get("prompt_id")), int(r.get("sample_idx", 0))))
    removed: Counter = Counter()
    syntax_stats = {"checked": Counter(), "failed": Counter(), "unchecked": 0}
    tests: Counter = Counter()

    survivors = []
    for rec in records:
        reason = _first_reason(rec, cfg, syntax_stats)
        if reason:
            removed[reason] += 1
        else:
            survivors.append(rec)

    # Self-consistency: rank each prompt's surviving samples, keep the best.
    cons = cfg["consistency"]
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for rec in survivors:
        by_prompt[str(rec.get("prompt_id"))].append(rec)
    n_max = max((len(v) for v in by_prompt.values()), default=0)
    run_tests = cons["run_tests"] == "always" or (cons["run_tests"] == "auto" and n_max > 1)
    chosen = []
    for pid in sorted(by_prompt):
        group = by_prompt[pid]
        if not cons["enabled"] or (len(group) == 1 and not run_tests):
            chosen.extend(group if not cons["enabled"] else group[:1])
            continue
        ranked = rank_samples(group, run_tests=run_tests, timeout_s=float(cons["timeout_s"]),
                              prefer=str(cons["prefer"]), workers=int(cons["workers"]))
        for r in ranked:
            tests[r.tests.status] += 1
        best = ranked[0]
        if cons["require_tests_pass"] and best.tests.status in ("failed", "timeout"):
            removed["tests_failed"] += len(ranked)
            continue
        best.record.setdefault("_qc", {})["tests"] = best.tests.status
        chosen.append(best.record)
        removed["not_best_sample"] += len(ranked) - 1

    # Exact, then near duplicates across the whole set.
    kept = []
    seen_exact: set[str] = set()
    nd = cfg["near_dedup"]
    lsh = MinHashLSH(float(nd["threshold"]), int(nd["num_perm"]), int(nd["bands"])) if nd["enabled"] else None
    for rec in chosen:
        if cfg["exact_dedup"]:
            h = hashlib.sha256(normalise(_text(rec)).encode()).hexdigest()
            if h in seen_exact:
                removed["exact_duplicate"] += 1
                continue
            seen_exact.add(h)
        if lsh is not None:
            field = nd["field"]
            text = _text(rec) if field == "completion" else f"{rec.get('prompt', '')}\n{_text(rec)}"
            if lsh.add_if_new(shingles(text, int(nd["shingle"]))) is not None:
                removed["near_duplicate"] += 1
                continue
        kept.append(rec)

    report = {
        "input_records": len(records),
        "input_prompts": len({r.get("prompt_id") for r in records}),
        "kept": len(kept),
        "removed": {k: int(removed.get(k, 0)) for k in REASONS},
        "removed_total": int(sum(removed.values())),
        "syntax": {"checked_blocks": dict(sorted(syntax_stats["checked"].items())),
                   "records_failing_by_language": dict(sorted(syntax_stats["failed"].items())),
                   "unchecked_blocks": syntax_stats["unchecked"]},
        "tests": dict(sorted(tests.items())),
        "kept_by_language": dict(sorted(Counter((r.get("meta") or {}).get("language") for r in kept).items(),
                                        key=lambda kv: str(kv[0]))),
        "kept_by_task_type": dict(sorted(Counter((r.get("meta") or {}).get("task_type") for r in kept).items(),
                                         key=lambda kv: str(kv[0]))),
    }
    assert report["kept"] + report["removed_total"] == report["input_records"], report
    return kept, report


def training_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The slim form the training data config reads (see ``conf/data/api_sft.yaml``)."""
    meta = dict(rec.get("meta") or {})
    return {"id": f"{rec.get('prompt_id')}-{rec.get('sample_idx', 0)}", "prompt_id": rec.get("prompt_id"),
            "sample_idx": rec.get("sample_idx", 0), "system": rec.get("system"), "prompt": rec.get("prompt"),
            "completion": rec.get("completion"), "model": rec.get("model"),
            "meta": {k: meta.get(k) for k in ("family", "task_type", "language", "difficulty", "source")},
            "qc": rec.get("_qc", {})}


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"filter report: {report['input_records']} records ({report['input_prompts']} prompts) -> "
             f"{report['kept']} kept"]
    for k, v in report["removed"].items():
        if v:
            lines.append(f"  removed {k:<16} {v:>7}")
    fails = report["syntax"]["records_failing_by_language"]
    if fails:
        lines.append("  syntax errors by language: " + ", ".join(f"{k}={v}" for k, v in fails.items()))
    if report["tests"]:
        lines.append("  tests: " + ", ".join(f"{k}={v}" for k, v in report["tests"].items()))
    return "\n".join(lines)


def filter_file(results_path: str | Path, out_path: str | Path, report_path: str | Path | None = None,
                cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read ``results.jsonl``, write ``filtered.jsonl`` (atomically) and ``filter_report.json``."""
    results_path = Path(results_path)
    if not results_path.is_file():
        raise FileNotFoundError(f"filter: results file {results_path} does not exist; run the generate stage first")
    records = list(read_jsonl(results_path))
    kept, report = filter_records(records, cfg)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in kept:
            f.write(json.dumps(training_record(rec), ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("%s", format_report(report))
    return report
