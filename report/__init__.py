"""Markdown reports with plots of an NNI experiment (any stage) or a run folder (a retrain, a DARTS
search), read offline: ``python -m report EXPERIMENT_ID_OR_FOLDER [-o OUT/]``; comparisons of
experiments of one stage (``python -m report A B ... -o OUT/``) and the study report of all stages
(``python -m report --study ...``).

Experiments are read through the shared reader :mod:`experiments.reader` into one table of trials
(:mod:`report.trials`) that every section, export, comparison and study reads; retrains of an
experiment's best trials (``--top K [--seeds ...]`` of the retrain commands) through
:mod:`experiments.top_k`. Like every tool that reads several stages' outputs, this package imports only
``core/``.
"""
