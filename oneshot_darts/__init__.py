"""One-shot DARTS on CIFAR-10 with NNI 3.0: ``search.py`` (first-order search on NNI's differentiable
supernet of :class:`oneshot_darts.space.DartsSpace`, writing ``final_arch.json``), ``retrain.py``
(the fixed network through the core, the paper's recipe) and nnictl wrappers (``config.yml``,
``config_retrain.yml``) that put their per-epoch accuracy into NNI's web UI."""
