"""Markdown reports with plots of an NNI experiment (any stage) or a run folder (a retrain, a DARTS
search), read offline: ``python -m report EXPERIMENT_ID_OR_FOLDER [-o OUT/]``.

Experiments are read through the shared reader :mod:`core.experiments`; retrains of an
experiment's best trials (``--top K`` of the retrain commands) through :mod:`core.retrains`.
Like every tool that reads several stages' outputs, this package imports only ``core/``.
"""
