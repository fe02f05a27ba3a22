"""The Dockerfile installs the package exactly as README.md's first command does, and runs it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def readme_default_command() -> list[str]:
    """The ``&&``-separated steps of the first bash block under "## Two commands"."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    return [s.strip() for s in block.split("&&")]


def dockerfile() -> list[tuple[str, str]]:
    """``(instruction, argument)`` pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            out.append((op.upper(), " ".join(arg.split())))
    return out


def test_install_lines_match_the_readme():
    steps = readme_default_command()
    assert steps[0] == "python3 -m venv .venv" and steps[1] == ". .venv/bin/activate"
    readme_pips = [s for s in steps if s.startswith("pip install")]
    assert readme_pips == ["pip install torch==2.13.0", "pip install -e ."]  # the README as read
    ops = dockerfile()
    runs = [arg for op, arg in ops if op == "RUN"]
    assert runs[0] == steps[0]
    workdir = next(arg for op, arg in ops if op == "WORKDIR")
    path = next(arg for op, arg in ops if op == "ENV" and arg.startswith("PATH="))
    assert path.startswith(f"PATH={workdir}/.venv/bin:")  # what activating the venv does
    docker_pips = [r for r in runs if r.startswith("pip install")]
    assert len(docker_pips) == len(readme_pips)
    for ours, theirs in zip(docker_pips, readme_pips):
        # the only difference allowed: the CPU index the README itself names for other machines
        assert ours in (theirs, f"{theirs} {CPU_INDEX}")
    assert CPU_INDEX.split()[1] in (REPO / "README.md").read_text()


def test_the_image_runs_the_default_job_with_the_package_inside():
    ops = dockerfile()
    assert ops[-1] == ("CMD", '["distill-train"]') and readme_default_command()[-1] == "distill-train"
    copied = " ".join(arg for op, arg in ops if op == "COPY")
    for needed in ("pyproject.toml", "README.md", "distill", "conf"):
        assert needed in copied
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "outputs" in ignored and "conf" not in ignored
