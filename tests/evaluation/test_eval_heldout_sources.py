"""distill-eval's held-out text sources: JSONL, folders, single files, the character budget."""

from __future__ import annotations

import pytest

from distill.evaluation.heldout import HeldoutSettings, load_texts


def test_jsonl_source_reads_the_field_within_the_budget(tmp_path):
    rows = tmp_path / "val.jsonl"
    rows.write_text('{"code": "abcdef"}\n\n{"code": "ghij"}\n{"code": "never read"}\n')
    settings = HeldoutSettings.from_mapping({"source": str(rows), "text_field": "code", "max_chars": 8})
    assert load_texts(settings) == ["abcdef", "gh"]  # the budget cuts the second text and stops


def test_folder_source_reads_py_and_txt_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("notes\n")
    (tmp_path / "c.json").write_text("{}")
    assert sorted(load_texts(HeldoutSettings(source=str(tmp_path)))) == ["notes\n", "x = 1\n"]


def test_bad_sources_name_the_key(tmp_path):
    rows = tmp_path / "val.jsonl"
    rows.write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(KeyError, match=r"heldout.text_field: .*val.jsonl:2 has no field 'text'"):
        load_texts(HeldoutSettings(source=str(rows)))
    with pytest.raises(FileNotFoundError, match=r"heldout.source: .*missing.jsonl does not exist"):
        load_texts(HeldoutSettings(source=str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"heldout.source: .*empty holds no text"):
        load_texts(HeldoutSettings(source=str(tmp_path / "empty")))
