"""Every console script as installed, started from a temporary directory (not the repository):
``--help`` and a seconds-long real job each; plus what a user of the CLI sees (a run that ends
before its first validation, a custom loss in a package in the current directory, an expected
configuration error without a traceback, a teacher loaded from a folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent
TINY = ["debug=tiny", "trainer.max_steps=2", "trainer.val_check_interval=2"]


def cli(name: str, *args: str, cwd: Path, ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"console script {name} is not installed next to {sys.executable}: pip install -e .")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    proc = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{name} {' '.join(args)}: rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_answers_help_from_another_directory(name, tmp_path):
    proc = cli(name, "--help", cwd=tmp_path)
    assert proc.stdout.strip(), f"{name} --help printed nothing"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """``distill-train`` from a temp dir; 5 steps end before the first scheduled validation (150)."""
    work = tmp_path_factory.mktemp("cli")
    run = work / "run"
    cli("distill-train", "debug=tiny", "trainer.max_steps=5", "trainer.val_check_interval=150",
        "summary.enabled=true", "summary.baseline=false", f"hydra.run.dir={run}", cwd=work)
    return work, run


def test_a_run_that_ends_before_its_first_validation_still_reports_heldout_metrics(trained_run):
    work, run = trained_run
    rows = [json.loads(json.dumps(r)) for r in (run / "summary.json").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert rows and summary["student"]["loss"] > 0  # the final validation ran
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "student" / "config.json").is_file()


def test_real_jobs_of_the_other_console_scripts(trained_run):
    work, run = trained_run
    out = cli("distill-compare", str(run), cwd=work).stdout
    assert "val/loss" in out
    exported = work / "exported"
    cli("distill-export", str(run), "--out", str(exported), cwd=work)
    assert (exported / "config.json").is_file()
    cache = work / "cache"
    cli("distill-cache-logits", "debug=tiny", "cache.k=4", "cache.max_steps=2", f"cache.dir={cache}",
        f"hydra.run.dir={work / 'cache_run'}", cwd=work)
    assert (cache / "manifest.json").is_file()


def test_an_expected_config_error_prints_its_message_without_a_traceback(tmp_path):
    proc = cli("distill-train", *TINY, "+trainer.accumulate_grad_batches=4", f"hydra.run.dir={tmp_path / 'r'}",
               cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    assert "Error: trainer.accumulate_grad_batches=4: distill accumulates" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    env_full = subprocess.run([str(BIN / "distill-train"), *TINY, "+trainer.accumulate_grad_batches=4",
                               f"hydra.run.dir={tmp_path / 'r2'}"], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "HYDRA_FULL_ERROR": "1"}, timeout=300)
    assert env_full.returncode != 0 and "Traceback" in env_full.stderr


MARGIN = '''
import torch
from distill.losses.components import LossComponent
from distill.types import Need, TeacherKind


class TopOneMargin(LossComponent):
    needs = frozenset({Need.STUDENT_LOGITS, Need.TEACHER_LOGITS})
    teacher_kinds = frozenset({TeacherKind.FULL})

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, inputs):
        logq = torch.log_softmax(inputs.student.logits.float(), -1)
        top = inputs.teacher.logits.argmax(-1, keepdim=True)
        return torch.relu(self.margin - logq.gather(-1, top).squeeze(-1))
'''


def test_a_custom_loss_in_a_package_in_the_current_directory_needs_no_pythonpath(tmp_path):
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / "mylab" / "losses.py").write_text(MARGIN)
    run = tmp_path / "run"
    cli("distill-train", *TINY, "+loss.components.margin={_target_: mylab.losses.TopOneMargin, margin: 2}",
        "+loss.weights.margin=0.3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert "train/margin" in (next(run.glob("csv/*/metrics.csv"))).read_text().splitlines()[0]
    # a broken package: the real import error is shown, not Hydra's "Error locating target"
    (tmp_path / "mylab" / "losses.py").write_text("import not_a_module_anywhere\n" + MARGIN)
    proc = cli("distill-train", *TINY, "+loss.components.margin={_target_: mylab.losses.TopOneMargin}",
               "+loss.weights.margin=0.3", f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "No module named 'not_a_module_anywhere'" in proc.stderr


def _teacher_folder(path: Path, tokenizer_dir: Path, swap: bool = False) -> Path:
    """A 2-layer, 48-wide Llama saved with the student's tokenizer (two ids swapped when ``swap``)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if swap:
        spec = json.loads(tok.backend_tokenizer.to_str())
        vocab = spec["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[300:302]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        from tokenizers import Tokenizer

        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                      **{k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student_tokenizer(tmp_path_factory) -> Path:
    """The tiny student's tokenizer as debug=tiny trains it (built once through the real path)."""
    from distill.build import build_checked
    from distill.config import compose_config

    cfg = compose_config("train", ["debug=tiny"], tmp_path_factory.mktemp("tok") / "run", root_dir=REPO)
    return Path(build_checked(cfg).tokenizer.name_or_path)


def test_a_teacher_folder_with_swapped_token_ids_is_refused_naming_both_tokenizers(tmp_path, student_tokenizer):
    folder = _teacher_folder(tmp_path / "teacher", student_tokenizer, swap=True)
    proc = cli("distill-train", *TINY, "teacher=hf", f"teacher.model.name_or_path={folder}",
               f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, ok=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(folder) in proc.stderr and str(student_tokenizer) in proc.stderr and "shared vocabulary" in proc.stderr
    # the old bypass: the default teacher preset pointed at the folder is refused as ambiguous
    proc = cli("distill-train", *TINY, "teacher=tiny_stdlib", f"teacher.model.name_or_path={folder}",
               f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "teacher=hf" in proc.stderr


def test_the_resolved_config_records_the_teacher_that_was_loaded(tmp_path, student_tokenizer):
    folder = _teacher_folder(tmp_path / "teacher", student_tokenizer)
    run = tmp_path / "run"
    cli("distill-train", *TINY, "teacher=hf", f"teacher.model.name_or_path={folder}", f"hydra.run.dir={run}",
        cwd=tmp_path)
    cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert cfg["teacher"]["model"]["name_or_path"] == str(folder) and "pretrain" not in cfg["teacher"]
    loaded = cfg["teacher"]["loaded"]
    assert loaded["config"]["num_hidden_layers"] == 2 and loaded["config"]["hidden_size"] == 48
    assert loaded["from_scratch"] is False and len(loaded["config_sha256"]) == 16
    assert cfg["student"]["tokenizer"] == str(student_tokenizer)
