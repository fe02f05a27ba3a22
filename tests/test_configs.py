"""Every file under conf/ composes, and every `_target_` matches its callable's signature.

Nothing here loads model weights: targets are imported and inspected, not instantiated.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_method
from omegaconf import OmegaConf

from distill.config import CONF_DIR

CONF = Path(CONF_DIR)
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Arguments that train() passes at instantiate time rather than from the config.
RUNTIME_ARGS = {"student", "teacher", "loss", "vocab_size", "callbacks", "logger", "tokenizer"}


def config_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml"))


def _compose(primary: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=primary, overrides=overrides, return_hydra_config=True)


def compose_file(path: Path):
    """Compose ``path`` the way a user would select it: as a primary config or a group option."""
    rel = path.relative_to(CONF)
    if len(rel.parts) == 1:
        return _compose(rel.stem, [])
    group, name = "/".join(rel.parts[:-1]), rel.stem
    errors = []
    for primary in ["train", *[p for p in PRIMARY if p != "train"]]:
        for override in (f"{group}={name}", f"+{group}={name}"):
            try:
                return _compose(primary, [override])
            except Exception as e:  # try the next primary config / override form
                errors.append(f"{primary} {override}: {e}")
    raise AssertionError(f"{rel} composes with no primary config:\n" + "\n".join(errors))


def targets(node, path="cfg"):
    """Yield ``(key path, dict)`` for every mapping with a `_target_`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from targets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from targets(v, f"{path}[{i}]")


def check_signature(where: str, node: dict) -> None:
    fn = get_method(node["_target_"]) if not isinstance(node["_target_"], type) else node["_target_"]
    sig = inspect.signature(fn)
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    keys = set(node) - HYDRA_KEYS
    unknown = sorted(k for k in keys if k not in params and not takes_kwargs)
    assert not unknown, f"{where}: {node['_target_']} takes no argument(s) {unknown}"
    if node.get("_partial_"):
        return
    required = {n for n, p in params.items() if p.default is p.empty and p.kind in
                (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    missing = sorted(required - keys - RUNTIME_ARGS)
    assert not missing, f"{where}: {node['_target_']} needs {missing}, which the config does not give"


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(CONF)))
def test_every_config_file_composes_and_targets_match_signatures(path):
    cfg = compose_file(path)
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    found = list(targets(container))
    for where, node in found:
        check_signature(where, node)


def test_the_walk_sees_every_group():
    groups = {p.parent.name for p in config_files() if p.parent != CONF}
    assert {"teacher", "student", "loss", "hardware", "data", "trainer", "logger", "callbacks", "paths",
            "experiment", "debug"} <= groups


def test_unknown_key_fails_with_its_name():
    with pytest.raises(Exception, match="lossx"):
        _compose("train", ["lossx.temperature=2"])
    with pytest.raises(Exception, match="temprature"):
        _compose("train", ["loss.temprature=2"])


# ------------------------------------------------------------------ evaluation: conf/eval/**
# Each preset is composed with the `eval` primary config, as `distill-eval <group>=<name>` does,
# and every part is built (keys checked against the classes; no weights, files or API clients).
EVAL_FILES = sorted((CONF / "eval").rglob("*.yaml"))
# What a user gives on the command line for the `???` / required keys of each preset.
EVAL_FILL = {"eval/benchmark/jsonl": ["benchmark.path=x.jsonl", "model.path=x"],
             "eval/model/answers": ["model.answers=x.jsonl"],
             "eval/model/lora": ["model.adapter=x"],
             "eval/model/checkpoint": ["model.checkpoint=x"],
             "eval/model/reference": [], "eval/model/api": [],
             "eval/compare/teacher_base_distilled": [f"models.{k}.path=x" for k in
                                                     ("teacher", "base", "distilled")]}


def eval_overrides(path: Path) -> list[str]:
    rel = path.relative_to(CONF).with_suffix("")
    group = "/".join(rel.parts[:-1])
    choice = f"{'+' if group == 'eval/compare' else ''}{group}={rel.name}"
    return [choice, *EVAL_FILL.get(str(rel), ["model.path=x"])]


@pytest.mark.parametrize("path", EVAL_FILES, ids=lambda p: str(p.relative_to(CONF)))
def test_every_eval_config_builds(path):
    from distill.evaluation.benchmarks import BenchmarkSpec
    from distill.evaluation.cli import model_sources
    from distill.evaluation.heldout import HeldoutSettings
    from distill.evaluation.settings import GenerationSettings
    from distill.evaluation.targets import build
    from distill.sandbox import SandboxConfig

    cfg = _compose("eval", eval_overrides(path))
    assert isinstance(build(cfg.benchmark, "benchmark", BenchmarkSpec), BenchmarkSpec)
    assert model_sources(cfg)
    plain = OmegaConf.to_container(cfg, resolve=False)
    GenerationSettings.from_mapping(plain["generation"])
    SandboxConfig.from_mapping(plain["sandbox"])
    HeldoutSettings.from_mapping(plain["heldout"])


def test_a_misspelt_eval_key_fails_with_its_name():
    from distill.config import ConfigError
    from distill.evaluation.benchmarks import BenchmarkSpec
    from distill.evaluation.targets import build

    with pytest.raises(Exception, match="limt"):
        _compose("eval", ["benchmark.limt=3"])
    cfg = _compose("eval", ["+benchmark.limt=3"])  # forced in: the class still refuses it
    with pytest.raises(ConfigError, match=r"benchmark\.limt: unknown key"):
        build(cfg.benchmark, "benchmark", BenchmarkSpec)


def test_the_online_twin_of_smollm2_prune_differs_only_in_its_teacher():
    from omegaconf import OmegaConf

    def plain(cfg, key):
        node = cfg[key]
        if not OmegaConf.is_config(node):
            return node
        node = OmegaConf.to_container(node, resolve=False)
        node.pop("default_root_dir", None)
        return node

    cached = _compose("train", ["experiment=smollm2_prune"])
    online = _compose("train", ["experiment=smollm2_prune_online"])
    for key in ("data", "loss", "module", "trainer", "validate_at_start", "seed"):
        assert plain(cached, key) == plain(online, key), key
    student = {k: v for k, v in plain(online, "student").items() if k != "teacher"}
    assert student == {k: v for k, v in plain(cached, "student").items() if k != "teacher"}
    # both cut the student from the same model
    assert OmegaConf.to_container(cached.teacher.write_with.model) == OmegaConf.to_container(online.teacher.model)
    assert online.teacher._target_ == "distill.teachers.hf.HFTeacher"


@pytest.mark.parametrize("preset", ["smollm2-135m-instruct", "lora", "checkpoint"])
def test_eval_model_presets_that_extend_hf_work_inside_a_comparison(preset):
    # eval/model presets extend hf.yaml; placed at models.<role>, hf's keys must land there too
    # (with a plain `- hf` they went to the top-level `model` and models.teacher had no _target_)
    cfg = _compose("eval", ["+eval/compare=teacher_base_distilled", f"eval/model@models.teacher={preset}",
                            "models.teacher.system_prompt=Answer briefly."])
    teacher = cfg.models.teacher
    assert teacher._target_ == "distill.evaluation.sources.local.LocalModel"
    assert teacher.role == "teacher" and teacher.system_prompt == "Answer briefly."
    assert "merge_lora" in teacher and "dtype" in teacher


@pytest.mark.parametrize("sequences,lmbda,policy", [("seqkd", 0.0, "student"), ("gkd", 0.5, "student"),
                                                    ("student", 1.0, "student"), ("speculative", 1.0, "speculative")])
def test_the_real_on_policy_rows_keep_their_sequences_preset(sequences, lmbda, policy):
    """experiment=real_on_policy must not pin what the rows vary: an lmbda set there once turned every
    row's `sequences=seqkd` (SFT on teacher answers) into half on-policy training."""
    cfg = _compose("train", ["experiment=real_on_policy", f"sequences={sequences}", "student.name_or_path=x"])
    assert cfg.sequences.lmbda == lmbda and cfg.sequences.policy == policy
    assert cfg.sequences.off_policy == "teacher"  # the API prompts have no reference answers
    assert cfg.data.source._target_ == "distill.onpolicy.prompt_sets.MixedPrompts"
