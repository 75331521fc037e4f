"""How many training epochs have ended, counted so that a resumed run agrees with an uninterrupted one.

``trainer.current_epoch`` is Lightning's ``epoch_progress.current.completed``. When the length is
set in optimiser steps (``max_steps``, ``max_epochs=-1``), Lightning 2.6 resumes an
iteration-based fit as if mid-epoch and does not advance that counter past the epoch the
checkpoint ended: from ``last.ckpt`` written at the end of epoch e, the resumed part reports
every epoch one lower than an uninterrupted run does (a step snapshot at step 1,500 said epoch
1,499). ``epoch_progress.current.processed`` counts every epoch whose training ended, before and
after the resume, in both epoch- and step-based fits; these helpers read it.
"""

from __future__ import annotations

import lightning.pytorch as pl


def epochs_ended(trainer: pl.Trainer) -> int:
    """The epochs whose training has ended (in ``on_train_epoch_end``: including this one)."""
    return int(trainer.fit_loop.epoch_progress.current.processed)


def epoch_in_progress(trainer: pl.Trainer) -> int:
    """The 1-based number of the epoch a training batch belongs to (for ``on_train_batch_*``)."""
    return epochs_ended(trainer) + 1
