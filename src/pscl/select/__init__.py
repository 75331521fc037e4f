"""Which images to annotate first: rank a pool of micrographs for a budget of K (``pscl-select``).

* :mod:`pscl.select.pool` - the candidates: a data folder's training images, or files, folders
  and globs; reading them, leaving out (and naming) the unreadable ones;
* :mod:`pscl.select.features` - a regular patch grid, and per patch intensity statistics or a
  network's multi-scale maps averaged over the patch (pure);
* :mod:`pscl.select.sources` - ``--features``: intensity, a random UNet or a run's pretrained
  network, and the warning for a run that learnt from this pool's labels;
* :mod:`pscl.select.extract` - the pool read into patch features;
* :mod:`pscl.select.strategies` - ``coverage``, ``typical`` and ``random`` (pure);
* :mod:`pscl.select.output` - ``selection.csv``, ``selection.json`` and ``contact_sheet.png``;
* :mod:`pscl.select.cli` - the ``pscl-select`` command.
"""
