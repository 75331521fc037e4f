"""Turning finished runs into tables, plots and comparisons (``pscl-report``).

* :mod:`pscl.reporting.report` - the report of multiruns, written in one call, and the ``pscl-report`` CLI;
* :mod:`pscl.reporting.run_records` - the runs, read from their folders, and the values each reports;
* :mod:`pscl.reporting.tables` - the results table per method and label regime (Markdown and CSV);
* :mod:`pscl.reporting.predictions` - the saved test predictions: per-image Dice and the gallery;
* :mod:`pscl.reporting.plots` - what every curve shares, and the label-efficiency curve;
* :mod:`pscl.reporting.breakdown` - paired rounds and per-image Dice by group;
* :mod:`pscl.reporting.regimes` - Dice per label regime and the supervised gap each method recovers;
* :mod:`pscl.reporting.stats` - mean ± std, the paired bootstrap interval and the gap recovered (pure functions);
* :mod:`pscl.reporting.study` - the pretraining-length curve and the dense-probe table;
* :mod:`pscl.reporting.selection` - chosen annotated images placed among random draws;
* :mod:`pscl.reporting.grid` - the validation table of a fine-tuning protocol grid;
* :mod:`pscl.reporting.intensity_baseline` - the best grey-level-only rule, a floor for Dice.
"""
