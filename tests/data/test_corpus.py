"""Text sources: the stdlib corpus split by file, local text/JSONL, HF datasets (local), packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.data.corpus import (HFDataset, StdlibCorpus, TextFiles, jsonl_texts, pack, read_stdlib_texts,
                                 stdlib_dir, stdlib_files)
from distill import pipeline

MBPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def test_pack_concatenates_with_eos_and_drops_the_remainder():
    out = pack([[1, 2, 3], [4, 5]], block=3, eos_id=0)
    assert [e["input_ids"] for e in out] == [[1, 2, 3], [0, 4, 5]]  # the final EOS is the dropped remainder
    assert all(e["labels"] == e["input_ids"] for e in out)
    assert pack([[1, 2]], block=3, eos_id=None) == []


def _source_tree(root: Path, n: int = 40) -> None:
    for i in range(n):
        (root / f"mod{i}.py").write_text(f"# module {i}\nx = {i}\n")
    for excluded in ("test", "idlelib"):
        (root / excluded).mkdir()
        (root / excluded / "skip_me.py").write_text("# never read\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "inner.py").write_text("# inner\n")


def test_stdlib_split_is_by_file_disjoint_and_stable(tmp_path):
    _source_tree(tmp_path)
    files = stdlib_files(tmp_path)
    assert tmp_path / "pkg" / "inner.py" in files
    assert not any("skip_me" in f.name for f in files)
    train_texts = read_stdlib_texts("train", 0.25, root=str(tmp_path))
    val_texts = read_stdlib_texts("val", 0.25, root=str(tmp_path))
    assert set(train_texts).isdisjoint(val_texts) and len(train_texts) + len(val_texts) == 41
    assert 3 <= len(val_texts) <= 20  # about a quarter of the files
    assert read_stdlib_texts("val", 0.25, root=str(tmp_path)) == val_texts
    with pytest.raises(ValueError, match="split must be one of"):
        read_stdlib_texts("test")


def test_the_real_stdlib_holds_out_about_five_percent_of_its_files():
    corpus = StdlibCorpus(max_chars=None)
    n_files = len(stdlib_files())
    assert n_files > 300, f"expected the stdlib's own sources under {stdlib_dir()}"
    val = corpus.texts("val")
    assert 0.02 * n_files <= len(val) <= 0.10 * n_files
    train_texts = set(StdlibCorpus(max_chars=2_000_000).texts("train"))
    assert not train_texts & set(val)
    with pytest.raises(ValueError, match="val_fraction"):
        StdlibCorpus(val_fraction=0.0)


def test_text_files_read_folders_and_jsonl(tmp_path):
    (tmp_path / "repo").mkdir()
    _source_tree(tmp_path / "repo")
    source = TextFiles(train=str(tmp_path / "repo"), val_fraction=0.25)
    train_docs, val_docs = source.texts("train"), source.texts("val")
    assert len(train_docs) + len(val_docs) == 43  # the glob **/*.py reads every folder
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"code": "def f():\\n    return 1"}\n\n{"code": "x = 2"}\n')
    assert TextFiles(train=str(rows), val=str(rows), text_field="code").texts("val") == ["def f():\n    return 1", "x = 2"]


def test_a_jsonl_row_without_the_field_names_file_line_and_key(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "ok"}\n{"body": "no text here"}\n')
    with pytest.raises(KeyError, match=r"data.source.text_field: .*rows.jsonl:2 has no field 'text' \(fields: \['body'\]\)"):
        TextFiles(train=str(rows), val=str(rows)).texts("train")
    assert next(jsonl_texts(rows, "text", "k")) == "ok"


def _hf_folder(root: Path) -> Path:
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps({"content": f"x = {i}\n"}) + "\n" for i in range(30)))
    (root / "validation.jsonl").write_text(json.dumps({"content": "y = 1\n"}) + "\n")
    return root


def test_hf_dataset_loads_a_local_folder_and_files(tmp_path):
    folder = _hf_folder(tmp_path / "ds")
    named = HFDataset(path=str(folder), val_split="validation", text_field="content")
    assert named.texts("val") == ["y = 1\n"] and len(named.texts("train")) == 30
    held_out = HFDataset(path="json", data_files=str(folder / "train.jsonl"), val_split=None,
                         text_field="content", val_fraction=0.2)
    train_rows, val_rows = held_out.texts("train"), held_out.texts("val")
    assert len(train_rows) + len(val_rows) == 30 and val_rows and set(train_rows).isdisjoint(val_rows)
    with pytest.raises(KeyError, match=r"data.source.text_field: .* no column 'text'.*content"):
        HFDataset(path=str(folder), text_field="text").texts("val")


def test_hf_dataset_that_cannot_be_loaded_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.source.path='.*nowhere'.*data.source.data_files"):
        HFDataset(path=str(tmp_path / "nowhere")).texts("train")


@pytest.mark.skipif(not MBPP.exists(), reason=f"{MBPP} not present")
def test_tiny_run_on_mbpp_code_through_data_hf(tiny_cfg):
    # The real loading path (load_dataset with the json builder) on real local data: MBPP's solutions.
    cfg = tiny_cfg("data=hf", "data.source.path=json", f"data.source.data_files={MBPP}",
                   "data.source.text_field=code", "data.seq_len=32", "data.batch_size=4", "data.max_val_examples=8",
                   "trainer.max_steps=2", "export.enabled=false")
    metrics = pipeline.run(cfg)
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
