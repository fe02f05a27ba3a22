"""What a new user with a real model folder sees when something is missing (issue 23, points 4 and 6):
a clean ``Error:`` line and rc 2 through the installed console script, started from another
directory, never a traceback; and where the error has a fix that works, the fix with the values
filled in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TINY = ["debug=tiny", "trainer.max_steps=1"]


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    return subprocess.run([str(BIN / "distill-train"), *TINY, *args, f"hydra.run.dir={cwd / 'run'}",
                           f"paths.cache_dir={cwd / 'cache'}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def clean_error(proc: subprocess.CompletedProcess) -> str:
    """The ``Error:`` message; fails when the run did not stop with one (rc 2, no traceback)."""
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Error: " in proc.stderr, proc.stderr[-3000:]
    return proc.stderr[proc.stderr.index("Error: "):]


def _model_folder(path: Path, vocab_size: int, tokenizer_texts: list[str] | None = None) -> Path:
    """A 2-layer Llama saved with save_pretrained; with ``tokenizer_texts``, a BPE saved beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.data.tokenizer import train_bpe_tokenizer

    if tokenizer_texts is not None:
        train_bpe_tokenizer(tokenizer_texts, vocab_size, path)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_a_student_folder_without_tokenizer_files_names_the_key_and_the_folder(tmp_path):
    folder = _model_folder(tmp_path / "student", 2048)  # weights and config only
    err = clean_error(train("student=hf", f"student.name_or_path={folder}", cwd=tmp_path))
    assert "student.tokenizer / student.name_or_path" in err and str(folder) in err
    assert "no tokenizer files" in err and "tokenizer.save_pretrained" in err
    # transformers' own message for this case sends the user after the wrong fix
    assert "sentencepiece" not in err and "tiktoken" not in err


def test_a_missing_teacher_cache_names_the_command_that_writes_it(tmp_path):
    err = clean_error(train("teacher=cached", "loss=kd_chunked", cwd=tmp_path))
    assert "teacher=cached" in err and "distill-cache-logits" in err and "teacher.path" in err


def test_a_vocabulary_mismatch_gives_the_fresh_student_recipe_with_the_values(tmp_path):
    texts = ["def f(x):\n    return x + 1\n" * 50, "class A:\n    pass\n" * 50, "import os\nprint(os.sep)\n" * 30]
    teacher = _model_folder(tmp_path / "teacher", 320, texts)
    err = clean_error(train("teacher=hf", f"teacher.model.name_or_path={teacher}", cwd=tmp_path))
    recipe = f"student.tokenizer={teacher} student.config.vocab_size=320"
    assert recipe in err and "student=pruned" in err
    # the recipe it gives works: one step of the same run with it
    proc = train("teacher=hf", f"teacher.model.name_or_path={teacher}", *recipe.split(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("files", [["tokenizer_config.json"], []])
def test_the_folder_check_needs_only_one_tokenizer_file(tmp_path, files):
    from distill.config import ConfigError
    from distill.data.tokenizer import has_tokenizer_files, load_tokenizer

    for name in files:
        (tmp_path / name).write_text("{}")
    assert has_tokenizer_files(tmp_path) == bool(files)
    if not files:
        with pytest.raises(ConfigError, match=r"teacher.model.tokenizer: the folder .* has no tokenizer files"):
            load_tokenizer(str(tmp_path), key="teacher.model.tokenizer")
