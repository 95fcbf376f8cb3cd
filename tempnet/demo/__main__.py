"""`python -m tempnet.demo`: see tempnet.demo.run (user errors: one line `error: ...`, exit status 2)."""

import sys

from tempnet.demo.run import main
from tempnet.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
