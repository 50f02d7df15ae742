"""The whole lab in one resumable driver: ``python -m lab`` (what ``notebooks/colab.ipynb`` runs).

The lab's stages in order (:data:`lab.plan.STAGES`): the HPO experiment, the retrain of its winner,
the classic-NAS experiment with the HPO winner's optimizer and lr (``CIFAR_AUTOML_FROM_HPO``), the
DARTS protocol (``oneshot_darts/protocol.py``), the retrain of its cell, and the study report
(``python -m report --study``). A budget (:data:`lab.plan.BUDGETS`: ``smoke``, ``quick``, ``lab``)
sets their sizes.

Every stage runs through its own command as a subprocess (``nnictl create`` / ``nnictl resume``,
``hpo/retrain.py``, ``oneshot_darts/search.py``, ...), as a user would run it: this package imports
``core`` only (and ``models`` through ``core``'s training command, for the timing probe), never a stage.

Everything lives under one folder (:mod:`lab.state`): the NNI experiments, the run folders, the data
and compile cache, the reports and ``lab.json``, the record of which stage finished. A stage that
finished is read, not rerun; a stage that was cut resumes (``nnictl resume``, the retrain commands'
own resume). When that folder is on a FUSE mount (Google Drive on Colab), the lab works in a local
folder and mirrors it there (:mod:`lab.mirror`); ``docs/colab.md`` says why.
"""
