"""The command line every trainer shares: `--config --output-dir --resume --overwrite [key=value ...]`.

    python <folder>/train.py --config <folder>/configs/<setting>.yaml --output-dir DIR [key.sub=value ...]

`key.sub=value` overrides any config field (values are YAML; dotted keys reach into mapping fields,
e.g. `model.base.n_layer=1`). `--resume` continues DIR's newest complete checkpoint; `--overwrite`
replaces a run already in DIR. Launchers that add `--local_rank=N` (deepspeed) are accepted.

Exit statuses (`run_trainer`): 0 done, 2 user error (`error: ...`), 3 diverged (`error: training diverged at
step N ...`), 128 + the signal's number when preempted (143 for SIGTERM) after the checkpoint is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from tempnet.config import load_config
from tempnet.errors import run_cli
from tempnet.train.divergence import Diverged
from tempnet.train.signals import Preempted

__all__ = ["build_parser", "parse", "run_trainer"]


def build_parser(description: str, default_config: str | Path | None = None) -> argparse.ArgumentParser:
    """The shared parser; a trainer may add its own flags (Bimodal-CL: --evaluate --checkpoint)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=default_config,
                        help=f"YAML config (default: {default_config})" if default_config else "YAML config")
    parser.add_argument("--output-dir", type=Path, required=True, help="the run directory (created if missing)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    resume.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides, e.g. train.max_steps=10")
    return parser


def parse(argv: Sequence[str] | None, config_cls, parser: argparse.ArgumentParser):
    """(args, config): the config is `config_cls` defaults < --config YAML < overrides."""
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the flags
    return args, load_config(config_cls, args.config, args.overrides)


def run_trainer(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """`run_cli` (user errors: exit 2) plus the run protocol's endings: diverged (3) and preempted (128 + signal)."""
    try:
        return run_cli(main, argv)
    except Diverged as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(Diverged.status) from None
    except Preempted as exc:
        if str(exc):
            print(exc, file=sys.stderr, flush=True)
        raise SystemExit(exc.status) from None
