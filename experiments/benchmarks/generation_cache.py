"""Student generation on CPU: dynamic KV cache vs static (``sequences.sampling.static_cache``) vs
static + ``torch.compile`` (``sequences.sampling.compile``), interleaved in one process.

    python experiments/benchmarks/generation_cache.py --model $DISTILL_CACHE/pruned/<cut>   # any HF causal LM folder

distill's own generator (``distill.onpolicy.generation.HFGenerator``) on random prompts of
``--prompt-tokens`` (the same shapes every call, as a fixed-length prompt set gives; prompts of new
lengths make a compiled step recompile), greedy, ``--new-tokens`` per prompt, wall clock. Prints each
mode's first call (compilation included) and the median of the later calls, and checks that every
mode writes the same tokens as the dynamic cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face causal LM folder (e.g. the pruned SmolLM2 cut)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from distill.onpolicy.generation import HFGenerator, Sampling

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(100, vocab - 1, (args.batch, args.prompt_tokens), generator=g)
    mask = torch.ones_like(ids)
    n = args.new_tokens
    modes = {"dynamic": Sampling(max_new_tokens=n, greedy=True),
             "static": Sampling(max_new_tokens=n, greedy=True, static_cache=True),
             "static+compile": Sampling(max_new_tokens=n, greedy=True, static_cache=True, compile=True)}
    gen, times, first = HFGenerator(), {k: [] for k in modes}, {}
    for r in range(args.rounds):
        for k, s in modes.items():
            t0 = time.perf_counter()
            out = gen(model, ids, mask, s, stop_ids=[], pad_id=0)
            times[k].append(time.perf_counter() - t0)
            first.setdefault(k, out.completion)
            print(f"round {r + 1}/{args.rounds} {k}: {times[k][-1]:.2f} s", flush=True)
    base = statistics.median(times["dynamic"][1:])
    print(f"\n=== generation, {args.batch} x {args.prompt_tokens} prompt tokens -> {n} new tokens, greedy, "
          f"torch threads {torch.get_num_threads()} (wall clock; later = median of calls 2..{args.rounds})")
    for k in modes:
        later = statistics.median(times[k][1:])
        print(f"{k:<16} first call {times[k][0]:6.2f} s   later {later:6.2f} s   vs dynamic {later / base:.3f}x   "
              f"same tokens as dynamic: {torch.equal(first[k], first['dynamic'])}")


if __name__ == "__main__":
    main()
