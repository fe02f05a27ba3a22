"""Page faults and CPU time per training step, hand-written loop vs distill (RESULTS.md, "Where the default
step's overhead was"). Run from experiments/benchmarks:  python page_faults.py minimal distill minimal distill
(args: methods; "distill" = loss=kd, any other name = loss=<name>). Prepend MALLOC_* env or keep_freed_memory to compare."""
import sys, os, time, tempfile, logging, resource
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import torch
torch.set_num_threads(1)
from pathlib import Path
import throughput as T
from common import StepClock
logging.basicConfig(level=logging.ERROR)
out = Path(tempfile.mkdtemp())
setup = T.Setup(16, 128, 0, out)
total = 14
for m in sys.argv[1:]:
    clock = StepClock()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if m == "minimal":
        T.run_minimal(setup, total, clock)
    else:
        T.run_distill(setup, total, clock, extra=[] if m == "distill" else ["loss=" + m])
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    d = clock.durations(4, "cpu")
    print(f"{m}: median step {sorted(d)[len(d)//2]:.3f} user {r1.ru_utime-r0.ru_utime:.2f} sys {r1.ru_stime-r0.ru_stime:.2f} minflt {r1.ru_minflt-r0.ru_minflt}", flush=True)
