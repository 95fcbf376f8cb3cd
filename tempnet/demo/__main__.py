"""`python -m tempnet.demo`: see tempnet.demo.run (user errors: one line `error: ...`, exit status 2; a
signal ends it like a trainer: one line, exit status 128 + the signal)."""

import sys

from tempnet.demo.run import main
from tempnet.train.cli import run_trainer

if __name__ == "__main__":
    sys.exit(run_trainer(main))
