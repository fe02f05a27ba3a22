"""The sandbox's settings (``conf/eval/sandbox/*.yaml``) and the environment a sample sees.

Kept apart from the process handling in :mod:`distill.sandbox.runner` so that the settings, their
checks and the environment allowlist read on one screen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from distill.structured import from_mapping

# Modules imported once in the worker so that forked samples find them ready. Pure speed: a
# sample that imports them gets the same module it would have loaded itself.
DEFAULT_PREIMPORT = (
    # what the guard patches (it must be loaded anyway) ...
    "socket", "subprocess", "shutil", "io", "posix", "_posixsubprocess", "linecache",
    "traceback", "faulthandler",
    # ... and what most benchmark programs import. Kept short on purpose: every loaded module
    # makes each fork (page tables, copy-on-write faults) a little more expensive.
    "math", "re", "collections", "itertools", "functools", "heapq", "typing",
)
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@dataclass
class SandboxConfig:
    """Limits and isolation settings; every field is also a key of ``conf/eval/sandbox/*.yaml``.

    Attributes:
        timeout: wall-clock seconds per program (tests included). CPU time is capped a little
            above it as a backstop.
        memory_mb: address-space cap (RLIMIT_AS). ``0`` disables. Address space, not resident
            memory: numpy/torch imports reserve a lot of it, so keep this >= 1024 for such code.
        max_processes: RLIMIT_NPROC. Counts processes of the sample's uid, which is private when
            privileges are dropped; for a non-root evaluator it counts *all* its processes.
        file_size_mb: largest file a sample may write (RLIMIT_FSIZE).
        open_files: RLIMIT_NOFILE.
        max_output_bytes: bytes of stdout and of stderr kept per program (the rest is counted and
            discarded; a flood cannot fill memory or disk).
        workers: parallel programs; 0 = number of CPUs (at most 8).
        fresh_interpreter: start a new interpreter for every program instead of forking it from a
            warm worker. Slower (see experiments/eval_speed); no state at all shared with a
            previous fork parent.
        guard: install the in-process guard (disabled calls raise ``SandboxViolation``).
        drop_privileges: ``auto`` = when the evaluator is root and can setuid, run each sample
            as uid ``uid_base + slot``; ``true`` = require it; ``false`` = never.
        uid_base: first private uid (one per worker slot, unused by real accounts).
        network_namespace: ``auto`` = private network namespace where permitted; ``true`` =
            require; ``false`` = never. The guard blocks sockets either way.
        hash_seed: PYTHONHASHSEED of the workers. Fixed by default because some MBPP tests
            compare set iteration order of strings; ``null`` = random per worker.
        preimport: modules loaded in the worker before forking.
        python: interpreter for workers (default: this one).
        extra_env: variables passed to samples in addition to PATH/LANG basics. Never put
            secrets here.
        grace_s: extra seconds the parent waits for a worker's answer beyond ``timeout`` before
            declaring the worker hung and restarting it.
        tmp_dir: where the per-sample directories are made. ``auto`` = ``/dev/shm`` (tmpfs)
            when writable, else the system temp dir. Creating and removing a directory on a
            journaled disk costs ~1-2 ms, on tmpfs microseconds; the price is that what a
            sample writes (each file capped by ``file_size_mb``, removed right after the sample)
            sits in RAM while it runs.
    """

    timeout: float = 3.0
    memory_mb: int = 1024
    max_processes: int = 16
    file_size_mb: int = 64
    open_files: int = 256
    max_output_bytes: int = 8192
    workers: int = 0
    fresh_interpreter: bool = False
    guard: bool = True
    drop_privileges: Any = "auto"
    uid_base: int = 64000
    network_namespace: Any = "auto"
    hash_seed: int | None = 0
    preimport: Sequence[str] = DEFAULT_PREIMPORT
    python: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    grace_s: float = 10.0
    tmp_dir: str = "auto"

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"sandbox.{key}: {why} (got {getattr(self, key)!r})")

        if not self.timeout > 0:
            raise bad("timeout", "must be > 0 seconds")
        for key in ("memory_mb", "max_processes", "file_size_mb", "open_files",
                    "max_output_bytes", "workers"):
            if int(getattr(self, key)) < 0:
                raise bad(key, "must be >= 0")
        if 0 < self.memory_mb < 64:
            raise bad("memory_mb", "below 64 MiB even the interpreter cannot run")
        if 0 < self.open_files < 8:
            raise bad("open_files", "must be >= 8 (the child needs its own pipes)")
        for key in ("drop_privileges", "network_namespace"):
            if getattr(self, key) not in ("auto", True, False):
                raise bad(key, "must be auto, true or false")
        if not 0 < self.uid_base < 2**31:
            raise bad("uid_base", "must be a positive uid")
        for name in self.extra_env:
            upper = name.upper()
            if any(word in upper for word in ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")):
                raise bad("extra_env", f"refusing to pass {name!r} to model-written code")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "SandboxConfig":
        """Build from a (Hydra) mapping; unknown keys are an error naming the key."""
        cfg = dict(cfg or {})
        if "preimport" in cfg and cfg["preimport"] is not None:
            cfg["preimport"] = tuple(cfg["preimport"])
        if "extra_env" in cfg:
            cfg["extra_env"] = dict(cfg["extra_env"] or {})
        return from_mapping(cls, cfg, "sandbox")

    @property
    def n_workers(self) -> int:
        return self.workers or min(8, os.cpu_count() or 1)


def scrubbed_env(extra: Mapping[str, str] | None = None, hash_seed: int | None = 0,
                 home: str | None = None) -> dict[str, str]:
    """The whole environment a sample sees: nothing inherited but locale and PATH basics.

    Built from an allowlist rather than by deleting known secrets, so a variable nobody thought
    of (a cloud credential, a W&B key, an HF token) cannot leak to model-written code.
    """
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # One thread per numeric library: parallel workers already use the cores, and each BLAS
    # thread reserves stack address space that counts against RLIMIT_AS.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = str(int(hash_seed))
    if home:
        env["HOME"] = env["TMPDIR"] = home
    env.update(extra or {})
    return env


def pick_tmp_dir(cfg: SandboxConfig) -> str | None:
    """The base folder for sample directories (see ``SandboxConfig.tmp_dir``)."""
    if cfg.tmp_dir and cfg.tmp_dir != "auto":
        if not os.path.isdir(cfg.tmp_dir):
            raise ValueError(f"sandbox.tmp_dir: {cfg.tmp_dir} is not a directory")
        return cfg.tmp_dir
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None
