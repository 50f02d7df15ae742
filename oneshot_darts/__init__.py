"""One-shot DARTS on CIFAR-10 with NNI 3.0: ``search.py`` (the search on NNI's differentiable
supernet of :class:`oneshot_darts.space.DartsSpace`: first or second order, plain or PC-DARTS edges,
writing ``final_arch.json``; with ``--seeds`` the paper's multi-seed protocol, ``protocol.py``),
``retrain.py`` (the fixed network through the core, the paper's recipe), the published cells in
``archs/``, and nnictl wrappers (``config.yml``, ``config_retrain.yml``) that put their per-epoch
results into NNI's web UI. Design and sources: ``docs/darts.md``."""
