"""``python -m report EXPERIMENT_ID_OR_FOLDER [-o OUT/]``: see :mod:`report.cli`."""
from report.cli import main

if __name__ == "__main__":
    main()
