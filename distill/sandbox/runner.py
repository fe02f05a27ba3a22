"""Run model-written programs in child processes, with limits, and classify what happened.

Layers, from the outside in (``docs/evaluation.md`` says what each does and does not stop):

1. A worker process per parallel slot, started as ``python -s -B _worker.py`` with its
   own session and a scrubbed environment (PATH/LANG basics only: no API keys, tokens or
   secrets reach it). Where permitted it moves into a private network namespace.
2. For every program the worker forks a child that: starts a new session (so the whole process
   group can be killed), gets a fresh temporary working directory, sets rlimits (address space,
   CPU seconds, file size, open files, processes), drops to a private unprivileged uid when the
   evaluator runs as root (this is what makes RLIMIT_NPROC count, and what protects files the
   sample does not own), and installs a guard that disables process creation, signals, sockets
   and file changes outside its directory (an accident stopper, not a security boundary).
3. The worker enforces the wall-clock timeout, kills the process group with SIGKILL, kills any
   stray process the sample left (the worker is a child subreaper; with a private uid it also
   kills everything running as that uid), captures stdout/stderr truncated to a byte cap, and
   removes the directory.
4. This module talks to the workers from a thread pool, restarts a worker that dies or hangs, and
   turns every failure mode into an :class:`ExecResult` instead of an exception.

Outcomes: ``passed``, ``failed`` (an AssertionError: the tests ran and said no), ``error`` (any
other exception; ``error_type`` names it, e.g. ``NameError``, ``MemoryError``, ``SystemExit``,
``SandboxViolation``), ``timeout`` (wall-clock or CPU limit), ``syntax_error`` (did not compile),
``crashed`` (the process died without reporting: a signal, ``os._exit``, a broken sandbox).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import queue
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from distill.sandbox.config import SandboxConfig, pick_tmp_dir, scrubbed_env
from distill.sandbox.result import ExecResult, SandboxUnavailable

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
_HEADER = struct.Struct(">Q")


# ----------------------------------------------------------------------------------- workers
class _WorkerProcess:
    """Parent-side handle of one worker (one slot = one private uid)."""

    def __init__(self, cfg: SandboxConfig, slot: int, tmp_root: str, once: bool = False):
        self.cfg = cfg
        self.slot = slot
        uid = None
        if cfg.drop_privileges in ("auto", True) and os.geteuid() == 0:
            uid = cfg.uid_base + slot
        settings = {
            "tmp_root": tmp_root,
            "uid": uid,
            "network_namespace": cfg.network_namespace in ("auto", True),
            "preimport": list(cfg.preimport or ()),
            "once": once,
        }
        cmd = [cfg.python or sys.executable, "-s", "-B", str(WORKER_SCRIPT), json.dumps(settings)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=tmp_root,
            env=scrubbed_env(cfg.extra_env, cfg.hash_seed, home=tmp_root),
            start_new_session=True,
            close_fds=True,
        )
        self._out = self.proc.stdout.fileno()
        hello = self._read(deadline=time.monotonic() + 60.0)
        if not hello or not hello.get("hello"):
            err = (hello or {}).get("error", "no hello frame")
            self.kill()
            raise SandboxUnavailable(f"sandbox worker failed to start: {err}")
        self.info: dict[str, Any] = hello["hello"]
        if cfg.drop_privileges is True and self.info.get("uid") is None:
            self.kill()
            raise SandboxUnavailable(
                "sandbox.drop_privileges=true but the worker cannot switch to a private uid "
                "(needs root / CAP_SETUID); set it to auto or false")
        if cfg.network_namespace is True and not self.info.get("network_namespace"):
            self.kill()
            raise SandboxUnavailable(
                "sandbox.network_namespace=true but unshare(CLONE_NEWNET) is not permitted "
                "here; set it to auto or false")

    def _read(self, deadline: float) -> dict | None:
        buf = bytearray()
        need = _HEADER.size
        header_done = False
        while True:
            while len(buf) < need:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([self._out], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(self._out, max(need - len(buf), 1 << 16))
                if not chunk:
                    return None
                buf += chunk
            if header_done:
                return json.loads(bytes(buf[:need]).decode("utf-8"))
            size = _HEADER.unpack(bytes(buf[:_HEADER.size]))[0]
            del buf[:_HEADER.size]
            need = size
            header_done = True

    def request(self, req: dict, wait_s: float) -> dict:
        data = json.dumps(req).encode("utf-8")
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        self.proc.stdin.flush()
        res = self._read(deadline=time.monotonic() + wait_s)
        if res is None:
            raise EOFError("sandbox worker exited")
        return res

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.kill()


class Sandbox:
    """Executes programs in isolated children; use as a context manager.

    >>> with Sandbox(SandboxConfig(timeout=2)) as sb:
    ...     sb.run("assert 1 + 1 == 2").outcome
    'passed'
    """

    def __init__(self, config: SandboxConfig | Mapping[str, Any] | None = None):
        if not isinstance(config, SandboxConfig):
            config = SandboxConfig.from_mapping(config)
        self.config = config
        self._tmp_root = tempfile.mkdtemp(prefix="distill-sandbox-", dir=pick_tmp_dir(config))
        os.chmod(self._tmp_root, 0o711)  # private uids must reach their own sample dirs
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(config.n_workers):
            self._slots.put(slot)
        self._workers: dict[int, _WorkerProcess] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self.info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.close()
        shutil.rmtree(self._tmp_root, ignore_errors=True)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> dict[str, Any]:
        """Which isolation layers are really active (starts one worker if none ran yet)."""
        if not self.info:
            self.run("pass")
        return {**self.info, **{k: v for k, v in dataclasses.asdict(self.config).items()
                                if k not in ("preimport", "extra_env")}}

    # -- execution ---------------------------------------------------------------------------
    def _request(self, program: str, timeout: float) -> dict:
        cfg = self.config
        return {
            "id": next(self._ids),
            "program": program,
            "timeout": timeout,
            "memory_bytes": int(cfg.memory_mb) * 2**20,
            "file_bytes": int(cfg.file_size_mb) * 2**20,
            "open_files": int(cfg.open_files),
            "max_processes": int(cfg.max_processes),
            "max_output_bytes": int(cfg.max_output_bytes),
            "guard": bool(cfg.guard),
        }

    def _worker(self, slot: int, once: bool) -> _WorkerProcess:
        if once:
            return _WorkerProcess(self.config, slot, self._tmp_root, once=True)
        with self._lock:
            worker = self._workers.get(slot)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.kill()
            worker = _WorkerProcess(self.config, slot, self._tmp_root)
            with self._lock:
                self._workers[slot] = worker
        if not self.info:
            self.info = dict(worker.info)
        return worker

    def run(self, program: str, timeout: float | None = None) -> ExecResult:
        """Run one program to completion (or timeout) and classify it. Never raises for
        anything the program does; raises :class:`SandboxUnavailable` if the config demands an
        isolation layer this machine cannot provide."""
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        timeout = float(timeout or self.config.timeout)
        slot = self._slots.get()
        once = self.config.fresh_interpreter
        worker = None
        try:
            worker = self._worker(slot, once)
            if once and not self.info:
                self.info = dict(worker.info)
            try:
                res = worker.request(self._request(program, timeout),
                                     wait_s=timeout + self.config.grace_s)
            except (TimeoutError, EOFError, OSError, ValueError) as exc:
                log.warning("sandbox worker %d failed (%s); restarting it", slot, exc)
                worker.kill()
                with self._lock:
                    self._workers.pop(slot, None)
                return ExecResult(outcome="crashed", error_type="SandboxWorkerLost",
                                  message=f"sandbox worker lost: {type(exc).__name__} {exc}",
                                  duration=timeout)
            return ExecResult.from_dict(res)
        finally:
            if once and worker is not None:
                worker.close()
            self._slots.put(slot)

    def map(self, programs: Sequence[str], timeouts: Sequence[float] | float | None = None,
            on_result: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
        """Run many programs in parallel (``workers`` at a time); results in input order.

        ``on_result(index, result)`` is called from worker threads as results arrive (used for
        progress and incremental writing); it must be thread-safe.
        """
        if not isinstance(timeouts, Sequence):
            timeouts = [timeouts] * len(programs)
        if len(timeouts) != len(programs):
            raise ValueError("map: one timeout per program")
        results: list[ExecResult | None] = [None] * len(programs)

        def job(i: int) -> None:
            results[i] = self.run(programs[i], timeouts[i])
            if on_result is not None:
                on_result(i, results[i])

        if len(programs) <= 1 or self.config.n_workers == 1:
            for i in range(len(programs)):
                job(i)
        else:
            with ThreadPoolExecutor(max_workers=self.config.n_workers,
                                    thread_name_prefix="sandbox") as pool:
                for fut in [pool.submit(job, i) for i in range(len(programs))]:
                    fut.result()
        return results  # type: ignore[return-value]


def run_programs(programs: Iterable[str], config: SandboxConfig | Mapping | None = None,
                 timeout: float | None = None) -> list[ExecResult]:
    """One-shot helper: start a sandbox, run everything, shut it down."""
    programs = list(programs)
    with Sandbox(config) as sb:
        return sb.map(programs, timeout)
