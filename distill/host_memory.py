"""Keep the memory a training step frees inside the process (glibc's malloc), as CUDA's caching
allocator does on a GPU.

Why: PyTorch's CPU tensors come straight from ``malloc``. At the end of each step every
vocabulary-wide tensor of the loss (logits, log-probabilities, their gradients: 16 MB each on the
embedded default) is freed at once, glibc gives the free top of its heap back to the OS, and the
next step takes it back one 4 KiB page fault at a time. Measured on the embedded default (2-core
VM, one torch thread, ``experiments/benchmarks/throughput.py``'s step): ~18,000 extra page faults
per step, 0.06 CPU-s of kernel time on a 0.39 s step, the whole of ``distill-train``'s overhead over
a hand-written loop (which hides it by keeping the previous step's logits alive into the next
step). With trimming off and big blocks served from the heap the two steps cost the same.

The price: the process keeps its peak heap after a step instead of returning it (what a GPU run
does with its device memory anyway). ``keep_freed_memory: false`` in ``conf/train.yaml`` turns it
off. It applies to glibc only (Linux); elsewhere it does nothing and says so at debug level.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = 1 << 30          # keep up to 1 GiB of free heap top; serve blocks below 1 GiB from the heap
_MMAP_FALLBACK = 1 << 25  # glibc builds that refuse a threshold above 32 MiB (their documented maximum)


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl, macOS, Windows do not)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed memory to the OS between steps; True when applied.

    Both settings are needed: a fixed trim threshold also freezes glibc's *dynamic* mmap threshold
    at its 128 KiB start, which would send every large tensor to ``mmap`` (a fresh, page-faulted
    mapping per allocation: ten times worse), so the mmap threshold is raised with it.
    """
    libc = _glibc()
    if libc is None:
        log.debug("keep_freed_memory: not glibc, nothing to set")
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP) == 1 or libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_FALLBACK) == 1
    if not mmap_ok:  # never fix the trim threshold alone (see above)
        log.debug("keep_freed_memory: glibc refused the mmap threshold, left as it was")
        return False
    return libc.mallopt(_M_TRIM_THRESHOLD, _KEEP) == 1
