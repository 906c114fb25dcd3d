"""``python -m rlcore``: see :mod:`rlcore.cli`."""
import sys

from rlcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
