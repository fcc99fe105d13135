"""`python -m core.cli ...`: the command line without the studio's launcher."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
