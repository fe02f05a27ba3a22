"""The one JSONL reader: one record per line, blank lines skipped, errors that name the line.

A file written record by record (results, generations, API answers) can be cut mid-line by a
crash; readers of such files pass ``tolerate_torn_tail=True`` to drop (with a warning) a last line
that does not parse. Any other unreadable line is an error: it is not a crash artefact, and
guessing would silently lose or invent data. The exception is an append-only event log that a
restarted run appends to after a crash (rate-limit state, batch state): there a torn line can be
followed by good ones, and ``skip_torn_lines=True`` drops each unreadable line with a warning.
Lines are streamed (a corpus need not fit in memory); ``.gz`` files are read transparently.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.config import ConfigError

log = logging.getLogger(__name__)


class CorruptJSONL(ConfigError):
    """A line of a JSONL file (other than a torn last one, where tolerated) is not valid JSON."""


def iter_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False,
               skip_torn_lines: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of ``path``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        held: tuple[int, bytes] | None = None  # one line of look-ahead: is this the last line?
        for lineno, raw in enumerate(fh, 1):
            if held is not None:
                yield from _parse(path, *held, last=False, tolerate_torn_tail=tolerate_torn_tail,
                                  skip_torn_lines=skip_torn_lines)
            held = (lineno, raw)
        if held is not None:
            yield from _parse(path, *held, last=True, tolerate_torn_tail=tolerate_torn_tail,
                              skip_torn_lines=skip_torn_lines)


def _parse(path: Path, lineno: int, raw: bytes, *, last: bool, tolerate_torn_tail: bool,
           skip_torn_lines: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    if not raw.strip():
        return
    try:
        yield lineno, json.loads(raw)
    except json.JSONDecodeError as e:
        if skip_torn_lines or (last and tolerate_torn_tail):
            log.warning("%s: ignoring a torn line %d (%d bytes, an interrupted write)", path, lineno, len(raw))
            return
        raise CorruptJSONL(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False,
               skip_torn_lines: bool = False) -> list[dict[str, Any]]:
    """Every record of ``path`` (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, tolerate_torn_tail=tolerate_torn_tail,
                                         skip_torn_lines=skip_torn_lines)]
