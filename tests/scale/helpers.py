"""Shared by the scale tests: composing the real configs, free ports, and 2-rank launches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def compose(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """The config ``distill-<app> <overrides>`` builds (``train`` by default), writing into ``output_dir``."""
    from distill.config import compose_config

    return compose_config(config_name, overrides, output_dir, root_dir=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Python script in a child process (its own process group); fail with its output."""
    full = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-8000:]}")
    return proc
