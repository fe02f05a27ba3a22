"""The ``sequences`` seam: what the training module and the build ask of a sequence source.

:mod:`distill.build` checks a source against the teacher before any weights load, then connects
it to the run's tokenizer; :class:`distill.module.DistillationModule` calls it before each step's
loss. :class:`distill.onpolicy.sources.SequenceSource` is the built-in one; another source (a
vLLM engine, a replay buffer) subclasses this and is named by ``_target_`` in ``conf/sequences``.
"""

from __future__ import annotations


class Sequences:
    """Base of every sequence source (see the module docstring)."""

    def check(self, teacher, loss=None) -> None:
        """Raise a :class:`~distill.config.ConfigError` naming the fix when ``teacher`` (or ``loss``)
        cannot train on the sequences this source writes. Called before the teacher is prepared."""

    def connect(self, tokenizer) -> "Sequences":
        """Take what the source needs from the run's tokenizer (EOS and padding ids)."""
        return self

    def attach(self, datamodule) -> None:
        """Add what the source reads from the data to the DataModule's batches (a
        :class:`~distill.data.datamodule.BatchHook`); called at the start of fit, before the loaders."""

    def __call__(self, batch: dict, module, step: int) -> tuple[dict, dict[str, float]]:
        """The batch to train on at ``step`` and the log values of the step (``{}`` when none)."""
        raise NotImplementedError
