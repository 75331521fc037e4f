"""The callbacks a run's config names (``conf/callbacks/``): the resumable ``last.ckpt`` and the
prediction writer. The callbacks the training stages add themselves are in :mod:`pscl.training`."""
