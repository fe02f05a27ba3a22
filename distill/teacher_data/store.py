"""Append-only JSONL result store that a crash can interrupt at any byte without losing work.

Why JSONL and not a database: one record per line, written with a single ``write`` and flushed
(optionally ``fsync``-ed) as soon as the answer arrives, means a killed process loses only the
requests that were still in flight, and the file stays readable by ``jq``/``datasets`` with no
extra tooling. The only damage a crash can do is a half-written **last** line; :meth:`load`
detects it, moves the fragment to a side file and truncates the results back to the last complete
record, so the rerun simply asks for that sample again.

Each record is keyed by ``(prompt_id, sample_idx, model)`` (the requested model: several teachers
may answer the same prompt). A rerun reads the keys that are done and skips
them; a key that somehow appears twice (two processes sharing a folder) is reported and only its
first record is used. Two generators writing the same folder at once are prevented up front with an
exclusive ``flock`` on ``<file>.lock``, which the OS releases even on ``SIGKILL``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from distill.jsonl import CorruptJSONL

log = logging.getLogger(__name__)

Key = tuple[str, int, str]


#: A line other than the last is unreadable: not a crash artefact, so we refuse to guess.
CorruptStoreError = CorruptJSONL


class StoreLockedError(RuntimeError):
    """Another process is writing the same results file."""


def record_key(rec: dict[str, Any]) -> Key:
    return str(rec["prompt_id"]), int(rec["sample_idx"]), str(rec.get("requested_model") or rec.get("model") or "")


class ResultStore:
    """The results file of one generation run, opened for appending.

    Use as a context manager: ``with ResultStore(path) as store: store.done ... store.append(rec)``.
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.records: dict[Key, dict[str, Any]] = {}
        self.duplicates = 0
        self.repaired_bytes = 0
        self._fh = None
        self._lock_fh = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "ResultStore":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(str(self.path) + ".lock", "a+")
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock_fh.close()
            self._lock_fh = None
            raise StoreLockedError(f"{self.path} is being written by another process "
                                   f"(lock {self.path}.lock is held); wait for it or use another out_dir") from e
        self.load()
        # O_APPEND: every write lands at the current end even if something else appended meanwhile.
        self._fh = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- reading and repair --------------------------------------------------------------------
    def load(self) -> None:
        """Read existing records; cut a half-written last line back to the last complete record."""
        self.records.clear()
        self.duplicates = 0
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            raw = data[pos:end]
            lineno += 1
            is_last = end >= len(data)
            rec = None
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict) or "prompt_id" not in rec or "sample_idx" not in rec:
                        raise ValueError("record lacks prompt_id/sample_idx")
                except ValueError as e:  # JSONDecodeError is a ValueError
                    if is_last:
                        break  # a crash mid-write: repaired below
                    raise CorruptStoreError(
                        f"{self.path}:{lineno}: unreadable record ({e}); only a corrupt *last* line is "
                        f"repaired automatically, fix or delete this one") from e
                if nl < 0:
                    # Valid JSON but no newline: the write was cut exactly before "\n". Keep the
                    # record and finish its line, so the next append starts on a fresh line.
                    self._repair(data, len(data), add_newline=True)
                    data = data + b"\n"
                    end = len(data)
            if rec is not None:
                key = record_key(rec)
                if key in self.records:
                    self.duplicates += 1
                else:
                    self.records[key] = rec
            good_end = end
            pos = end
        if good_end < len(data):
            self._repair(data, good_end)
        if self.duplicates:
            log.warning("%s: %d duplicate records (same prompt_id, sample_idx and model); the first of each is used",
                        self.path, self.duplicates)

    def _repair(self, data: bytes, good_end: int, add_newline: bool = False) -> None:
        if add_newline:
            with open(self.path, "ab") as f:
                f.write(b"\n")
            log.warning("%s: last record had no trailing newline (interrupted write); newline added", self.path)
            return
        tail = data[good_end:]
        side = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        side.write_bytes(tail)
        with open(self.path, "r+b") as f:
            f.truncate(good_end)
        self.repaired_bytes = len(tail)
        log.warning("%s: removed a corrupt last line of %d bytes (interrupted write), saved to %s; "
                    "that sample will be requested again", self.path, len(tail), side.name)

    # -- writing -------------------------------------------------------------------------------
    @property
    def done(self) -> set[Key]:
        return set(self.records)

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, rec: dict[str, Any]) -> bool:
        """Write one record durably; returns False (and writes nothing) if its key is already done."""
        key = record_key(rec)
        if key in self.records:
            log.debug("skipping duplicate result for %s", key)
            return False
        if self._fh is None:
            raise RuntimeError("ResultStore.append() called on a store that is not open")
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        self._fh.write(line)  # one write call: a crash leaves at most this one line partial
        if self.fsync:
            os.fsync(self._fh.fileno())
        self.records[key] = rec
        return True


def append_jsonl(path: str | Path, rec: dict[str, Any]) -> None:
    """Append one line to a side log (errors, batch state) where loss of the last line is harmless."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
