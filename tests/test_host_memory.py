"""keep_freed_memory: what a step frees stays in the process, so the next step does not page-fault it in."""

import subprocess
import sys
import textwrap

import pytest

from distill.host_memory import _glibc

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    if sys.argv[1] == "keep":
        from distill.host_memory import keep_freed_memory
        assert keep_freed_memory()
    def step():  # a training step's shape: big tensors made, touched, all freed at its end
        a = torch.ones(12 * 2**20)          # 48 MiB: above glibc's largest dynamic mmap threshold
        b = torch.ones(4 * 2**20) * 2.0     # 16 MiB
        return float(a[-1] + b[-1])
    step(); step()  # warm-up: the heap grows to the step's peak once
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_not_faulted_in_again():
    default, keep = faults("default"), faults("keep")
    step_pages = 64 * 2**20 // 4096  # one step's memory in 4 KiB pages
    # glibc's own trimming is erratic (its dynamic mmap threshold moves), but over 20 steps it faults
    # several steps' worth back in (98k-200k pages measured); kept memory faults in less than two
    # steps' worth in all (4k-12k measured), however many steps run
    assert default > 3 * step_pages, default
    assert keep < 2 * step_pages, keep
    assert default > 3 * keep, (keep, default)
