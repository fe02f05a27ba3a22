"""Evaluate one model on one benchmark: generate, post-process, execute, score, write.

Files, under ``<output_dir>/<model name>/<benchmark name>/``:

* ``run.json``: the settings that determine the outputs. A rerun with the same settings resumes;
  different settings stop with an error naming the keys that changed (``overwrite=true`` starts
  over), so two configurations are never mixed in one result file.
* ``generations.jsonl``: one line per sample as soon as it is generated (raw text, completion,
  tokens, seconds). Generation is the expensive part; a crash loses at most one chunk.
* ``results.jsonl``: one line per task once all its samples ran: prompt, per-sample completion,
  outcome, error type and message, captured output, n, c and per-task pass@k.
* ``summary.json``: pass@k (unbiased estimator, every configured k <= n), outcome counts,
  generation tokens/s, execution time, sandbox layers, settings.

Resume granularity is the task: tasks in ``results.jsonl`` are not run again; tasks with all
their samples in ``generations.jsonl`` are executed without generating again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.evaluation.benchmarks.task import Benchmark
from distill.evaluation.settings import GenerationSettings
from distill.evaluation.sources.base import CompletionSource
from distill.evaluation.passk import per_task_pass_at_k, summarize_pass_at_k
from distill.evaluation.postprocess import make_completion
from distill.sandbox import ExecResult, Sandbox
from distill.config import ConfigError
from distill.jsonl import read_jsonl

log = logging.getLogger(__name__)

KEEP_OUTPUT_CHARS = 2000


class SettingsChanged(ConfigError, RuntimeError):
    """An output folder holds results made with other settings."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_settings(source: CompletionSource, benchmark: Benchmark, settings: GenerationSettings,
                 sandbox_cfg: Any) -> dict[str, Any]:
    """Everything that changes what lands in the result files (and nothing that does not:
    batch size, worker count and the task subset may change between resumed runs)."""
    gen = dataclasses.asdict(settings)
    gen.pop("batch_size", None)
    return {
        "model": source.fingerprint(),
        "benchmark": {"name": benchmark.name, "source": benchmark.source,
                      "stop": list(benchmark.stop),
                      "chat_template_sha": hashlib.sha1(benchmark.chat_template.encode())
                      .hexdigest()[:12]},
        "generation": gen,
        "sandbox": {"timeout": sandbox_cfg.timeout, "memory_mb": sandbox_cfg.memory_mb,
                    "guard": sandbox_cfg.guard, "hash_seed": sandbox_cfg.hash_seed},
    }


def _records_if_any(path: Path) -> list[dict]:
    """Rows of a result file; a torn last line (killed mid-write) is dropped, not fatal."""
    return read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []


def _append(path: Path, rows: Sequence[Mapping]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()


class ModelRun:
    """The files of one model on one benchmark."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], overwrite: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_file = self.dir / "run.json"
        self.generations = self.dir / "generations.jsonl"
        self.results = self.dir / "results.jsonl"
        self.summary_file = self.dir / "summary.json"
        settings = json.loads(json.dumps(settings, default=repr))  # tuples -> lists, objects -> repr
        if self.run_file.exists() and not overwrite:
            old = json.loads(self.run_file.read_text()).get("settings", {})
            if old != settings:
                a, b = _flatten(old), _flatten(settings)
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
                raise SettingsChanged(
                    f"{self.dir} holds results made with other settings ({detail}). Use another "
                    f"output_dir, or overwrite=true to discard them.")
        if overwrite:
            for f in (self.generations, self.results, self.summary_file):
                f.unlink(missing_ok=True)
        self.run_file.write_text(json.dumps({"settings": settings}, indent=2))
        for f in (self.generations, self.results):
            _repair_tail(f)


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (the process died mid-write) so that appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        log.warning("%s: dropping a torn last line (interrupted write)", path)
        path.write_bytes(keep)


def evaluate_model(source: CompletionSource, benchmark: Benchmark, settings: GenerationSettings,
                   sandbox: Sandbox, out_dir: str | Path, ks: Sequence[int] = (1,),
                   overwrite: bool = False, chunk_tasks: int | None = None) -> dict[str, Any]:
    """Generate, execute and score every task of ``benchmark`` with an opened ``source``;
    returns the summary dict."""
    run = ModelRun(Path(out_dir), run_settings(source, benchmark, settings, sandbox.config),
                   overwrite=overwrite)
    n = int(settings.n)
    style = settings.style if settings.style != "auto" else source.style
    if source.fixed_style:
        style = source.style
    stop = settings.stop if settings.stop is not None else benchmark.stop
    tasks = benchmark.tasks
    done = {r["task_id"]: r for r in _records_if_any(run.results)}
    generated: dict[str, dict[int, dict]] = {}
    for row in _records_if_any(run.generations):
        generated.setdefault(row["task_id"], {})[int(row["sample"])] = row
    pending = [t for t in tasks if t.task_id not in done]
    resumed = len(tasks) - len(pending)
    if resumed:
        log.info("%s/%s: resuming, %d of %d tasks already done", source.name, benchmark.name,
                 resumed, len(tasks))

    def request_text(task) -> str:
        return benchmark.chat_prompt(task) if style == "chat" else task.prompt

    chunk = int(chunk_tasks or max(int(settings.batch_size), 16))
    gen_seconds = 0.0
    exec_wall = 0.0
    for c0 in range(0, len(pending), chunk):
        part = pending[c0:c0 + chunk]
        need = [t for t in part if len(generated.get(t.task_id, {})) < n]
        if need:
            requests = [(t.task_id, request_text(t)) for t in need]
            kwargs = {"style": style}
            if source.wants_raw_prompts:
                kwargs["raw_prompts"] = [t.prompt for t in need]
            result = source.generate(requests, settings, stop, **kwargs)
            gen_seconds += result.seconds
            per_row = result.seconds / max(1, len(need) * n)
            rows = []
            for t, texts, toks in zip(need, result.texts, result.new_tokens):
                for j, raw in enumerate(texts):
                    if source.fixed_style:
                        completion = raw
                    else:
                        completion = make_completion(raw, t.prompt, style, stop, t.entry_point)
                    row = {"task_id": t.task_id, "sample": j, "raw": raw,
                           "completion": completion, "tokens": int(toks[j]),
                           "seconds": per_row}
                    generated.setdefault(t.task_id, {})[j] = row
                    rows.append(row)
            _append(run.generations, rows)

        # One program per sample, or per test case of an APPS-style task (each with its timeout).
        programs, owners, timeouts = [], [], []
        for t in part:
            for j in range(n):
                for prog in t.programs(generated[t.task_id][j]["completion"]):
                    programs.append(prog)
                    owners.append((t, j))
                    timeouts.append(t.case_timeout)
        start = time.perf_counter()
        outcomes: list[ExecResult] = sandbox.map(programs, timeouts)
        exec_wall += time.perf_counter() - start
        by_sample: dict[tuple[str, int], list[ExecResult]] = {}
        for (t, j), res in zip(owners, outcomes):
            by_sample.setdefault((t.task_id, j), []).append(res)
        rows = []
        for t in part:
            samples = []
            for j in range(n):
                results = by_sample[(t.task_id, j)]
                res = next((r for r in results if not r.passed), results[0])  # first failure
                g = generated[t.task_id][j]
                sample = {
                    "sample": j, "completion": g["completion"], "outcome": res.outcome,
                    "error_type": res.error_type, "message": res.message,
                    "stdout": res.stdout[:KEEP_OUTPUT_CHARS],
                    "stderr": res.stderr[-KEEP_OUTPUT_CHARS:],
                    "duration": round(sum(r.duration for r in results), 4),
                    "tokens": g.get("tokens", 0),
                }
                if t.cases:
                    sample["cases_passed"] = sum(r.passed for r in results)
                    sample["cases"] = len(results)
                    sample["case_outcomes"] = [r.outcome for r in results]
                samples.append(sample)
            c = sum(s["outcome"] == "passed" for s in samples)
            row = {"task_id": t.task_id, "prompt": request_text(t), "n": n, "c": c,
                   **per_task_pass_at_k(n, c, ks), "samples": samples}
            rows.append(row)
            done[t.task_id] = row
        _append(run.results, rows)
        finished = resumed + c0 + len(part)
        if (finished * 10 // len(tasks)) != ((finished - len(part)) * 10 // len(tasks)):
            log.info("%s/%s: %d/%d tasks", source.name, benchmark.name, finished, len(tasks))

    summary = summarize(run, source, benchmark, settings, [done[t.task_id] for t in tasks],
                        generated, ks, sandbox, style)
    summary["this_run"] = {"generation_seconds": round(gen_seconds, 3),
                           "execution_wall_seconds": round(exec_wall, 3),
                           "resumed_tasks": resumed}
    run.summary_file.write_text(json.dumps(summary, indent=2))
    return summary


def _case_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """APPS's two accuracies (Hendrycks et al., 2021, sec. 4), averaged over the n samples:
    ``test_case_average`` = mean share of a problem's test cases passed, ``strict_accuracy`` =
    share of problems whose every case passed. Empty when no task has test cases."""
    per_task = []
    for r in results:
        samples = [s for s in r["samples"] if "cases" in s]
        if samples:
            per_task.append((sum(s["cases_passed"] / max(1, s["cases"]) for s in samples)
                             / len(samples),
                             sum(s["cases_passed"] == s["cases"] for s in samples) / len(samples)))
    if not per_task:
        return {}
    return {"test_case_average": sum(a for a, _ in per_task) / len(per_task),
            "strict_accuracy": sum(b for _, b in per_task) / len(per_task)}


def summarize(run: ModelRun, source: CompletionSource, benchmark: Benchmark,
              settings: GenerationSettings, results: list[dict],
              generated: Mapping[str, Mapping[int, dict]], ks: Sequence[int], sandbox: Sandbox,
              style: str) -> dict[str, Any]:
    counts = [(int(r["n"]), int(r["c"])) for r in results]
    passk = summarize_pass_at_k(counts, ks)
    dropped = sorted(k for k in set(ks) if f"pass@{k}" not in passk)
    if dropped:
        log.info("pass@k for k=%s skipped: needs n >= k (n=%d)", dropped, settings.n)
    outcomes: Counter = Counter()
    errors: Counter = Counter()
    exec_seconds = 0.0
    for r in results:
        for s in r["samples"]:
            outcomes[s["outcome"]] += 1
            if s["outcome"] not in ("passed", "failed"):
                errors[s.get("error_type") or s["outcome"]] += 1
            exec_seconds += float(s.get("duration") or 0)
    tokens = 0
    seconds = 0.0
    case_metrics = _case_metrics(results)
    for r in results:
        for row in generated.get(r["task_id"], {}).values():
            tokens += int(row.get("tokens") or 0)
            seconds += float(row.get("seconds") or 0)
    return {
        "model": source.name, "role": source.role, "kind": source.kind,
        "benchmark": benchmark.name, "style": style,
        "num_tasks": len(results), "n": int(settings.n), "ks": sorted(set(int(k) for k in ks)),
        **passk,
        "pass_at_k": passk,
        **case_metrics,
        "passed_tasks": sum(1 for r in results if r["c"] > 0),
        "failed_task_ids": [r["task_id"] for r in results if r["c"] == 0][:1000],
        "outcomes": dict(outcomes),
        "error_types": dict(errors.most_common(20)),
        "generation": {"tokens": tokens, "seconds": round(seconds, 4),
                       "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 and tokens else None},
        "execution": {"sample_seconds": round(exec_seconds, 3)},
        "sandbox": sandbox.info,
        "files": {"results": str(run.results), "generations": str(run.generations)},
    }
