"""``distill-teacher-data``: prompts -> teacher answers -> filtered training set, one Hydra app.

    distill-teacher-data                                   # all stages with conf/teacher_data.yaml
    distill-teacher-data stage=prompts prompts.num_prompts=50
    distill-teacher-data stage=estimate                    # dollars from the price table, no API call
    distill-teacher-data sampling.n=4 max_cost_usd=20      # generate + filter, resumable
    distill-teacher-data mode=batch                        # Message Batches at the batch discount
    distill-teacher-data stage=filter filters.near_dedup.threshold=0.8
    distill-teacher-data stage=report                      # dataset_report.md + dataset_report.png
    distill-teacher-data teacher_data/prompts=rationale    # reasoning + code, for data=api_rationale
    distill-teacher-data 'sampling.models=[claude-haiku-4-5,claude-sonnet-4-5]'   # multi-teacher

Everything lands in ``out_dir`` (``prompts.jsonl``, ``results.jsonl``, ``errors.jsonl``,
``filtered.jsonl``, ``rejected.jsonl``, ``filter_report.json``, ``generation_summary.json``,
``ratelimit_state.jsonl``, ``dataset_report.md``/``.png``), which is also where
Hydra saves the run's config, so rerunning the same command resumes the same dataset.

``provider=anthropic`` (the Messages API) or ``provider=openai`` (chat completions at any
OpenAI-compatible ``client.base_url``; ``logprobs=k`` stores the answer's top-k log-probs).
The key is taken from ``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY`` only (none on 127.0.0.1). A config that carries it (or any ``api_key``-like
entry) is refused, and a logging filter masks the key in every log line, so neither the output
folder, the saved Hydra config nor the logs can contain it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from distill.config import CONF_DIR
from distill.api_client.client import API_KEY_ENV, RetryPolicy, TeacherClient, api_key_from_env, estimate_tokens
from distill.api_client.openai_client import OPENAI_KEY_ENV, make_client
from distill.teacher_data.filters import filter_file
from distill.teacher_data.generate import RESULTS, Generator
from distill.api_client.pricing import PriceTable
from distill.teacher_data.prompts import generate_prompts
from distill.teacher_data.promptset import read_prompts, write_prompts
from distill.api_client.ratelimit import LimiterPool, limits_from_config
from distill.teacher_data.report import write_report
from distill.teacher_data.sampling import Sampling
from distill.config import app_errors, prepare_app

log = logging.getLogger(__name__)

STAGES = ("prompts", "estimate", "generate", "filter", "report", "all")
_SECRET_KEYS = ("api_key", "apikey", "auth_token", "anthropic_api_key", "openai_api_key", "x-api-key", "authorization")
KEY_ENVS = {"anthropic": API_KEY_ENV, "openai": OPENAI_KEY_ENV}


def key_env(cfg: DictConfig) -> str:
    provider = str(cfg.get("provider", "anthropic"))
    if provider not in KEY_ENVS:
        raise ValueError(f"provider must be one of {sorted(KEY_ENVS)}, got {provider!r}")
    return KEY_ENVS[provider]


class GenerationIncomplete(RuntimeError):
    pass


class _Redact(logging.Filter):
    """Masks the secret in every record that passes a handler, whoever logged it."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.secret in msg:
            record.msg = msg.replace(self.secret, "***")
            record.args = ()
        return True


def install_redaction(secret: str | None) -> None:
    if not secret:
        return
    f = _Redact(secret)

    def add(target) -> None:
        if not any(isinstance(x, _Redact) and x.secret == secret for x in target.filters):
            target.addFilter(f)

    for lg in (logging.getLogger(), logging.getLogger("anthropic"), logging.getLogger("httpx2")):
        add(lg)
        for h in lg.handlers:
            add(h)


def check_no_secrets(cfg: Any, secret: str | None, path: str = "") -> None:
    """Refuse configs that hold credentials: they would be saved in ``.hydra/config.yaml``."""
    if isinstance(cfg, DictConfig):
        try:  # resolved, so a key pulled in through ${oc.env:...} is caught too
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run: check unresolved
            cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            here = f"{path}.{k}" if path else str(k)
            if str(k).lower() in _SECRET_KEYS:
                raise ValueError(f"config key {here!r} looks like a credential; the API key is read from "
                                 f"{API_KEY_ENV} only - remove it from the config/command line")
            check_no_secrets(v, secret, here)
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            check_no_secrets(v, secret, f"{path}[{i}]")
    elif secret and isinstance(cfg, str) and secret in cfg:
        raise ValueError(f"config value {path!r} contains the API key; pass it via {API_KEY_ENV} only")


def _scrub_dir(root: Path, secret: str) -> None:
    """Last line of defence: if the key reached a file under the run dir, overwrite it."""
    for p in root.rglob("*"):
        if p.is_file() and p.stat().st_size < 50_000_000:
            data = p.read_bytes()
            if secret.encode() in data:
                p.write_bytes(data.replace(secret.encode(), b"***"))


def build_client(cfg: DictConfig) -> TeacherClient:
    c = cfg.client
    limits = LimiterPool(limits_from_config(OmegaConf.to_container(c, resolve=True)))
    retry = RetryPolicy(max_attempts=int(c.max_attempts), base_delay_s=float(c.backoff_base_s),
                        max_delay_s=float(c.backoff_max_s), max_retry_after_s=float(c.get("max_retry_after_s", 600)))
    return make_client(str(cfg.get("provider", "anthropic")), base_url=c.get("base_url"),
                       timeout_s=float(c.timeout_s), concurrency=int(c.concurrency), limits=limits, retry=retry,
                       seed=int(cfg.get("seed", 0)), logprobs=cfg.get("logprobs"))


def load_or_make_prompts(cfg: DictConfig, out_dir: Path):
    if cfg.get("prompts_file"):
        prompts = read_prompts(cfg.prompts_file)
        log.info("read %d prompts from %s", len(prompts), cfg.prompts_file)
    else:
        prompts = generate_prompts(OmegaConf.to_container(cfg.prompts, resolve=True))
        log.info("generated %d prompts (seed %s)", len(prompts), cfg.prompts.get("seed"))
    write_prompts(prompts, out_dir / "prompts.jsonl")
    return prompts


def estimate_cost(prompts, sampling: Sampling, prices: PriceTable, mean_output_tokens: int) -> dict[str, Any]:
    """Dollars for the prompt set before spending any: expected (4 chars/token in, ``mean_output_tokens``
    out) and worst case (3 chars/token in, every answer hitting ``max_tokens``), per priced model,
    and the total over the teachers the run uses (``sampling.models``, or ``sampling.model``)."""
    n = sampling.n
    sys_chars = len(sampling.system_prompt or "")
    calls = len(prompts) * n
    in_exp = sum(len(p.text) for p in prompts) * n / 4
    in_worst = sum(estimate_tokens(p.text) for p in prompts) * n
    sys_tok = sys_chars / 4 * calls
    out_exp = min(mean_output_tokens, sampling.max_tokens) * calls
    out_worst = sampling.max_tokens * calls
    # The API caches only prefixes of >= 1024 tokens (2048 for Haiku); a short system prompt is not.
    cached = bool(sampling.system_prompt and sampling.cache_system_prompt and sys_chars / 4 >= 1024)
    rows = {}
    for name, p in prices.models.items():
        sys_cost = (sys_tok * p.cache_read / 1e6) if cached else sys_tok * p.input / 1e6
        exp = (in_exp * p.input + out_exp * p.output) / 1e6 + sys_cost
        worst = (in_worst + sys_chars / 3 * calls) * max(p.input, p.cache_write) / 1e6 + out_worst * p.output / 1e6
        rows[name] = {"expected_usd": round(exp, 2), "expected_batch_usd": round(exp * (1 - prices.batch_discount), 2),
                      "worst_case_usd": round(worst, 2)}
    used = [prices.resolve(m) for m in sampling.teachers]
    total = {k: round(sum(rows[u][k] for u in used), 2) for k in ("expected_usd", "expected_batch_usd", "worst_case_usd")}
    return {"calls": calls * len(used), "calls_per_model": calls, "teachers": used, "selected_total": total,
            "expected_input_tokens": int(in_exp + sys_tok), "expected_output_tokens": int(out_exp),
            "assumed_mean_output_tokens": mean_output_tokens, "max_tokens": sampling.max_tokens,
            "system_prompt_cached": cached, "models": rows}


def format_estimate(est: dict[str, Any]) -> str:
    lines = [f"cost estimate: {est['calls']} calls ({est['calls_per_model']} per model), "
             f"~{est['expected_input_tokens']:,} input and "
             f"~{est['expected_output_tokens']:,} output tokens (mean {est['assumed_mean_output_tokens']} "
             f"out, max_tokens {est['max_tokens']})",
             f"  {'model':<22}{'expected':>10}{'batch':>10}{'worst':>10}"]
    for name, r in est["models"].items():
        mark = " <- used" if name in est["teachers"] else ""
        lines.append(f"  {name:<22}{r['expected_usd']:>10.2f}{r['expected_batch_usd']:>10.2f}"
                     f"{r['worst_case_usd']:>10.2f}{mark}")
    t = est["selected_total"]
    lines.append(f"  {'total (used models)':<22}{t['expected_usd']:>10.2f}{t['expected_batch_usd']:>10.2f}"
                 f"{t['worst_case_usd']:>10.2f}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole app minus Hydra's decorator, so tests and notebooks can call it with a composed cfg."""
    stage = str(cfg.stage)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    secret = os.environ.get(key_env(cfg), "").strip() or None
    install_redaction(secret)
    check_no_secrets(cfg, secret)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"out_dir": str(out_dir)}

    if stage in ("prompts", "estimate", "generate", "all"):
        prompts = load_or_make_prompts(cfg, out_dir)
        result["prompts"] = len(prompts)
        sampling = Sampling.from_config(OmegaConf.to_container(cfg.sampling, resolve=True))
        prices = PriceTable.from_config(OmegaConf.to_container(cfg.pricing, resolve=True))
        est = estimate_cost(prompts, sampling, prices, int(cfg.get("estimate_mean_output_tokens", 700)))
        result["estimate"] = est
        log.info("%s", format_estimate(est))

    summary = None
    if stage in ("generate", "all"):
        api_key_from_env(key_env(cfg), cfg.client.get("base_url"))  # fail before any work if the key is missing
        if str(cfg.mode) == "batch" and str(cfg.get("provider", "anthropic")) != "anthropic":
            raise ValueError("mode=batch uses Anthropic's Message Batches; with provider=openai use mode=messages")

        async def go():
            client = build_client(cfg)
            try:
                gen = Generator(prompts, out_dir, sampling, prices, client,
                                max_cost_usd=cfg.get("max_cost_usd"), progress=bool(cfg.get("progress", True)),
                                allow_settings_change=bool(cfg.get("allow_settings_change", False)),
                                fsync=bool(cfg.client.get("fsync", True)),
                                keep_rate_state=bool(cfg.client.get("persist_rate_state", True)))
                return await gen.run(mode=str(cfg.mode), concurrency=int(cfg.client.concurrency),
                                     batch_cfg=OmegaConf.to_container(cfg.batch, resolve=True))
            finally:
                await client.close()

        try:
            summary = asyncio.run(go())
        except KeyboardInterrupt:
            log.warning("interrupted: every answer received so far is saved in %s; rerun the same command "
                        "to request the rest", out_dir / RESULTS)
            raise
        result["generation"] = summary.to_dict()
        log.info("generation: %d new, %d before, %d failed, %d remaining; %s calls, $%.4f total",
                 summary.done_now, summary.done_before, summary.failed, summary.remaining,
                 summary.cost.get("calls"), summary.cost.get("cost_usd", 0.0))

    if stage in ("filter", "all"):
        report = filter_file(out_dir / RESULTS, out_dir / "filtered.jsonl", out_dir / "filter_report.json",
                             OmegaConf.to_container(cfg.filters, resolve=True))
        result["filter"] = report

    if stage in ("report", "all"):
        result["report"] = write_report(out_dir, title=str(cfg.get("report_title") or out_dir.name))
        log.info("dataset report: %s", result["report"]["markdown"])

    if secret:
        _scrub_dir(out_dir, secret)
    (out_dir / "last_run.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if summary is not None and (summary.failed or summary.stopped == "fatal"):
        raise GenerationIncomplete(
            f"{summary.failed} request(s) failed ({'run stopped: ' + summary.errors[-1] if summary.stopped == 'fatal' else 'see errors.jsonl'}); "
            f"{summary.remaining} answer(s) missing. Rerun the same command to retry them.")
    return result


# An absolute config dir: Hydra would resolve a relative one as a Python package once installed.
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="teacher_data")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        with app_errors():
            run(cfg)
    except GenerationIncomplete as e:
        log.error("%s", e)
        raise SystemExit(1) from None


def main() -> None:
    prepare_app()
    _hydra_main()


if __name__ == "__main__":
    main()
