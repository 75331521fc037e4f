"""Turning finished runs into tables, plots and comparisons (``pscl-report``).

* :mod:`pscl.reporting.report` - the results table of multiruns, plots, the ``pscl-report`` CLI;
* :mod:`pscl.reporting.breakdown` - paired rounds and per-image Dice by group;
* :mod:`pscl.reporting.regimes` - Dice per label regime and the supervised gap each method recovers;
* :mod:`pscl.reporting.stats` - the paired bootstrap interval and the gap recovered (pure functions);
* :mod:`pscl.reporting.study` - the pretraining-length curve and the dense-probe table;
* :mod:`pscl.reporting.grid` - the validation table of a fine-tuning protocol grid;
* :mod:`pscl.reporting.intensity_baseline` - the best grey-level-only rule, a floor for Dice.
"""
