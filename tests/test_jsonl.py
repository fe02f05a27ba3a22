"""distill/jsonl.py, the one JSONL reader: line numbers, the torn-tail and torn-line policies, gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from distill.jsonl import CorruptJSONL, iter_jsonl, read_jsonl


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_blank_lines_are_skipped_and_numbers_name_the_file_line(tmp_path):
    assert read_jsonl(_write(tmp_path, "a.jsonl", b'{"a":1}\n\n{"a":2}\n')) == [{"a": 1}, {"a": 2}]
    assert [n for n, _ in iter_jsonl(_write(tmp_path, "b.jsonl", b'{"a":1}\n\n{"a":2}'))] == [1, 3]
    assert read_jsonl(_write(tmp_path, "empty.jsonl", b"")) == []


def test_only_a_torn_last_line_is_tolerated_and_only_when_asked(tmp_path):
    for data in (b'{"a":1}\n{"a":', b'{"a":1}\n{"a":\n'):
        path = _write(tmp_path, "torn.jsonl", data)
        assert read_jsonl(path, tolerate_torn_tail=True) == [{"a": 1}]
        with pytest.raises(CorruptJSONL, match=r"torn.jsonl:2: not valid JSON"):
            read_jsonl(path)
    middle = _write(tmp_path, "middle.jsonl", b'{"a":1}\n{"a":\n\n')  # not the last line: not a crash
    with pytest.raises(CorruptJSONL, match=":2:"):
        read_jsonl(middle, tolerate_torn_tail=True)


def test_an_append_log_skips_every_torn_line(tmp_path):
    # a crash tore line 2, then the restarted run appended line 3 after it
    path = _write(tmp_path, "log.jsonl", b'{"a":1}\n{"a":{"b":2}\n{"c":3}\n')
    assert read_jsonl(path, skip_torn_lines=True) == [{"a": 1}, {"c": 3}]


def test_gzip_is_read_transparently(tmp_path):
    path = tmp_path / "g.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"a":1}\n{"a":2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
