"""The one place that touches Lightning's private state (pinned by tests/test_lightning_compat.py).

Loggers take their x-axis from Lightning's count of stepped batches, not from ``global_step``. With
one optimizer step per batch the two are equal, but after a resume Lightning re-derives the count
from where the checkpoint was written, and it comes out one high for a checkpoint saved at the end
of fit. No public setter exists, so the module keeps the logged step equal to the optimizer step
here, and resumed curves continue without a gap. If a Lightning upgrade moves the attribute, the
pinned test fails and names this file.
"""

from __future__ import annotations

import lightning as L

#: The Lightning release this module was written and tested against.
TESTED_LIGHTNING = "2.6"


def set_logged_step(trainer: L.Trainer, step: int) -> None:
    """Make the step the loggers record equal ``step`` (the optimizer step)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step
