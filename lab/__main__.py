"""``python -m lab --lab-dir DIR COMMAND [STAGE]``: see :mod:`lab.cli`."""
from lab.cli import main

if __name__ == "__main__":
    main()
