"""Quality control of teacher answers before they become training targets, with a counted report.

Sequence-level KD copies the teacher's answers verbatim, so every bad answer is a bad gradient:
a refusal teaches the student to refuse, a truncated answer to stop mid-function, a duplicate to
over-weight one pattern. Each record passes the filters in order and is counted once, under the
**first** filter that rejects it, so the report's numbers add up to the input size:

1. ``refusal``        - ``stop_reason == "refusal"`` or a refusal phrase at the start of the text
2. ``empty``          - nothing but whitespace
3. ``truncated``      - ``stop_reason`` ``max_tokens`` / ``model_context_window_exceeded``
4. ``too_short`` / ``too_long`` - character bounds
5. ``no_rationale``   - a prompt that asked for a rationale, answered without both tagged parts
6. ``no_code_block``  - a code task (write, fix a bug, refactor, tests, document) without a fenced block
7. ``syntax_error``   - a fenced block in a known language that does not parse (per-language counts)
8. ``rationale_mismatch`` - the rationale names a function the code neither defines nor calls
9. ``not_best_sample``/``tests_failed`` - self-consistency over all answers to a prompt: the ``n``
   samples of every teacher model compete under one ranking (syntax, tests, length)
10. ``exact_duplicate``/``near_duplicate`` - across the whole set (MinHash LSH, verified by Jaccard)

For rationale answers the code checks look at the answer part only. The report also breaks the
records down per teacher model: acceptance rate and dollars per accepted answer, the numbers that
say whether a dearer model pays for itself. :func:`run_filters` returns the rejected records too,
each with its reason (``rejected.jsonl``, read by the dataset report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from distill.jsonl import read_jsonl
from distill.teacher_data import rationale
from distill.teacher_data.catalogue import CODE_TASK_TYPES
from distill.teacher_data.consistency import rank_samples
from distill.teacher_data.minhash import MinHashLSH, shingles
from distill.teacher_data.syntax import check_blocks, extract_code_blocks

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
REASONS = ("refusal", "empty", "truncated", "too_short", "too_long", "no_rationale", "no_code_block", "syntax_error",
           "rationale_mismatch", "tests_failed", "not_best_sample", "exact_duplicate", "near_duplicate")

DEFAULTS: dict[str, Any] = {
    "refusal": True, "refusal_patterns": list(REFUSAL_PATTERNS), "min_chars": 20, "max_chars": 30000,
    "require_code_block": True, "syntax": True, "check_untagged": False, "exact_dedup": True,
    "rationale_agreement": True,
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
# The pipeline
# --------------------------------------------------------------------------------------------
def _text(rec: Mapping[str, Any]) -> str:
    return rec.get("completion") or ""


def answer_text(rec: Mapping[str, Any]) -> str:
    """The part of a reply the code checks look at: the answer of a rationale reply, else all of it."""
    return rec["answer"] if rec.get("answer") is not None else _text(rec)


def teacher_of(rec: Mapping[str, Any]) -> str:
    return str(rec.get("requested_model") or rec.get("model") or "unknown")


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
    if meta.get("response_format") == "rationale":
        if rec.get("rationale") is None and "answer" not in rec:  # results written before parsing existed
            parsed = rationale.parse(text)
            rec["rationale"], rec["answer"] = parsed if parsed else (None, None)
        if not rec.get("rationale") or not rec.get("answer"):
            return "no_rationale"
    text = answer_text(rec)
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
    if cfg["rationale_agreement"] and rec.get("rationale"):
        missing = rationale.disagreements(rec["rationale"], text)
        if missing:
            rec.setdefault("_qc", {})["rationale_names_missing"] = missing
            return "rationale_mismatch"
    return None


@dataclass
class FilterResult:
    kept: list[dict[str, Any]]
    rejected: list[dict[str, Any]]  # each with ``_qc["removed"]`` = the reason
    report: dict[str, Any]


def run_filters(records: Iterable[dict[str, Any]], cfg: Mapping[str, Any] | None = None) -> FilterResult:
    """Apply every filter to copies of ``records``: kept, rejected (with reasons) and the report."""
    cfg = _merge(cfg)
    records = [dict(r) for r in records]
    # Fixed order (prompt, sample, model): which duplicate survives must not depend on arrival order.
    records.sort(key=lambda r: (str(r.get("prompt_id")), int(r.get("sample_idx", 0)), teacher_of(r)))
    removed: Counter = Counter()
    rejected: list[dict[str, Any]] = []
    syntax_stats = {"checked": Counter(), "failed": Counter(), "unchecked": 0}
    tests: Counter = Counter()

    def reject(rec: dict[str, Any], reason: str) -> None:
        removed[reason] += 1
        rec.setdefault("_qc", {})["removed"] = reason
        rejected.append(rec)

    survivors = []
    for rec in records:
        reason = _first_reason(rec, cfg, syntax_stats)
        if reason:
            reject(rec, reason)
        else:
            survivors.append(rec)

    # Self-consistency: rank each prompt's surviving answers (all samples of all teachers), keep the best.
    cons = cfg["consistency"]
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for rec in survivors:
        rec["_answer"] = answer_text(rec)
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
                              prefer=str(cons["prefer"]), workers=int(cons["workers"]), completion_field="_answer")
        for r in ranked:
            tests[r.tests.status] += 1
            r.record.setdefault("_qc", {})["tests"] = r.tests.status
        best = ranked[0]
        if cons["require_tests_pass"] and best.tests.status in ("failed", "timeout"):
            for r in ranked:
                reject(r.record, "tests_failed")
            continue
        chosen.append(best.record)
        for r in ranked[1:]:
            reject(r.record, "not_best_sample")

    # Exact, then near duplicates across the whole set.
    kept = []
    seen_exact: set[str] = set()
    nd = cfg["near_dedup"]
    try:
        lsh = MinHashLSH(float(nd["threshold"]), int(nd["num_perm"]), int(nd["bands"])) if nd["enabled"] else None
    except ValueError as e:  # name the config key the numbers came from
        raise ValueError(f"filters.near_dedup: {e}") from None
    for rec in chosen:
        if cfg["exact_dedup"]:
            h = hashlib.sha256(normalise(_text(rec)).encode()).hexdigest()
            if h in seen_exact:
                reject(rec, "exact_duplicate")
                continue
            seen_exact.add(h)
        if lsh is not None:
            field = nd["field"]
            text = _text(rec) if field == "completion" else f"{rec.get('prompt', '')}\n{_text(rec)}"
            if lsh.add_if_new(shingles(text, int(nd["shingle"]))) is not None:
                reject(rec, "near_duplicate")
                continue
        kept.append(rec)
    for rec in records:
        rec.pop("_answer", None)

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
        "kept_by_language": _count(kept, "language"),
        "kept_by_task_type": _count(kept, "task_type"),
        "by_model": by_model(records, kept),
    }
    assert report["kept"] + report["removed_total"] == report["input_records"], report
    return FilterResult(kept, rejected, report)


def filter_records(records: Iterable[dict[str, Any]], cfg: Mapping[str, Any] | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply every filter; returns ``(kept records, report)``. Input records are not modified."""
    res = run_filters(records, cfg)
    return res.kept, res.report


def _count(recs: Iterable[Mapping[str, Any]], meta_key: str) -> dict[str, int]:
    c = Counter((r.get("meta") or {}).get(meta_key) for r in recs)
    return dict(sorted(((str(k), v) for k, v in c.items()), key=lambda kv: kv[0]))


def by_model(records: list[Mapping[str, Any]], kept: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per teacher: answers, accepted, acceptance rate, dollars, and dollars per accepted answer.

    Every answer a model gave is paid for, accepted or not, so the cost per accepted answer is the
    model's whole spend divided by what survived the filters: the price of one training example.
    """
    out: dict[str, dict[str, Any]] = {}
    n_kept = Counter(teacher_of(r) for r in kept)
    for r in records:
        m = out.setdefault(teacher_of(r), {"records": 0, "kept": 0, "cost_usd": 0.0})
        m["records"] += 1
        m["cost_usd"] += float(r.get("cost_usd") or 0.0)
    for name, m in out.items():
        m["kept"] = int(n_kept.get(name, 0))
        m["acceptance_rate"] = round(m["kept"] / m["records"], 4) if m["records"] else None
        m["cost_usd"] = round(m["cost_usd"], 6)
        m["cost_per_accepted_usd"] = round(m["cost_usd"] / m["kept"], 6) if m["kept"] else None
    return dict(sorted(out.items()))


def training_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The slim form the training data configs read (``conf/data/api_sft.yaml``, ``api_rationale.yaml``).

    ``answer`` is always set (the whole completion unless the reply had a rationale part), so an
    answer-only task reads one field whatever the prompt's response format was.
    """
    meta = dict(rec.get("meta") or {})
    return {"id": f"{rec.get('prompt_id')}-{rec.get('sample_idx', 0)}-{teacher_of(rec)}",
            "prompt_id": rec.get("prompt_id"), "sample_idx": rec.get("sample_idx", 0), "system": rec.get("system"),
            "prompt": rec.get("prompt"), "completion": rec.get("completion"), "rationale": rec.get("rationale"),
            "answer": answer_text(rec), "model": rec.get("model"), "teacher": teacher_of(rec),
            "cost_usd": rec.get("cost_usd"),
            "meta": {k: meta.get(k) for k in ("family", "task_type", "language", "difficulty", "source",
                                              "response_format")},
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
    models = report.get("by_model") or {}
    if len(models) > 1 or any(m["records"] for m in models.values()):
        for name, m in models.items():
            per = "n/a" if m["cost_per_accepted_usd"] is None else f"${m['cost_per_accepted_usd']:.4f}"
            lines.append(f"  {name:<22} {m['kept']:>5}/{m['records']:<5} accepted ({m['acceptance_rate']:.0%}), "
                         f"${m['cost_usd']:.4f} spent, {per} per accepted answer")
    return "\n".join(lines)


REJECTED = "rejected.jsonl"


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def filter_file(results_path: str | Path, out_path: str | Path, report_path: str | Path | None = None,
                cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read ``results.jsonl``; write ``filtered.jsonl``, ``rejected.jsonl`` (beside it, each with
    ``qc.removed``) and ``filter_report.json``."""
    results_path = Path(results_path)
    if not results_path.is_file():
        raise FileNotFoundError(f"filter: results file {results_path} does not exist; run the generate stage first")
    records = read_jsonl(results_path, tolerate_torn_tail=True)  # a generation run may still be appending
    res = run_filters(records, cfg)
    report = res.report
    out_path = Path(out_path)
    _write_jsonl(out_path, (training_record(r) for r in res.kept))
    _write_jsonl(out_path.with_name(REJECTED), (training_record(r) for r in res.rejected))
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("%s", format_report(report))
    return report
