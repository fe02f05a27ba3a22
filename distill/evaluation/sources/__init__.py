"""Where completions come from, one module per source: a local HF model (``hf``), answers recorded
in a JSONL (``answers``), a live API (``api``), or a benchmark's reference solutions
(``reference``). :func:`build_source` picks one from an :class:`EvalModelConfig`.

Every source implements :class:`distill.evaluation.settings.CompletionSource`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from distill.evaluation.loading import load_hf_model
from distill.evaluation.model_config import EvalModelConfig
from distill.evaluation.settings import CompletionSource
from distill.evaluation.sources.answers import AnswersSource
from distill.evaluation.sources.api import AnthropicApi, ApiSource
from distill.evaluation.sources.hf import HFSource
from distill.evaluation.sources.reference import ReferenceSource

__all__ = ["AnswersSource", "AnthropicApi", "ApiSource", "HFSource", "ReferenceSource",
           "build_source"]


def build_source(spec: EvalModelConfig, references: Mapping[str, str | None], work_dir: Path
                 ) -> CompletionSource:
    """The completion source a model config describes (loads weights for local models)."""
    kind = spec.resolved_kind()
    if kind == "reference":
        return ReferenceSource(references)
    if kind == "answers":
        # recorded answers are chat replies unless the config says chat: false
        style = "completion" if spec.chat is False else "chat"
        return AnswersSource(spec.answers, spec.answers_fields, style=style)
    if kind == "api":
        api = spec.api
        if isinstance(api, Mapping):
            from hydra.utils import instantiate

            client = instantiate(dict(api))
        else:
            client = api
        if not hasattr(client, "complete"):
            raise TypeError(f"model.api must build an object with complete(prompt, ...); got "
                            f"{type(client).__name__}")
        return ApiSource(client)
    model, tokenizer, device = load_hf_model(spec, work_dir)
    return HFSource(model, tokenizer, device, spec.chat)
