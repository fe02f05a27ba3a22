"""Where completions come from, one module per source, each a :class:`CompletionSource` named by
``_target_`` in ``conf/eval/model/*.yaml``: local weights (``local``: HF folder or hub id, LoRA
adapter, a run's checkpoint; generation in ``hf``), answers recorded in a JSONL (``answers``), a
live API (``api``), or a benchmark's reference solutions (``reference``). ``base`` holds the
interface and the capabilities a source declares.
"""

from __future__ import annotations

from distill.evaluation.sources.answers import AnswersSource
from distill.evaluation.sources.api import AnthropicApi, ApiSource
from distill.evaluation.sources.base import CompletionSource
from distill.evaluation.sources.hf import HFSource
from distill.evaluation.sources.local import LocalModel
from distill.evaluation.sources.reference import ReferenceSource

__all__ = ["AnswersSource", "AnthropicApi", "ApiSource", "CompletionSource", "HFSource",
           "LocalModel", "ReferenceSource"]
