"""On-policy distillation: training sequences written by the student (GKD), the teacher (SeqKD) or
both (speculative KD), generated in batches during training. See :mod:`distill.onpolicy.sources`."""

from distill.onpolicy.generation import Generated, Generator, HFGenerator, Sampling
from distill.onpolicy.prompts import PromptSpec
from distill.onpolicy.sources import SequenceSource

__all__ = ["Generated", "Generator", "HFGenerator", "PromptSpec", "Sampling", "SequenceSource"]
