"""The command line every trainer shares: `--config --output-dir --resume --overwrite [key=value ...]`.

    python <folder>/train.py --config <folder>/configs/<setting>.yaml --output-dir DIR [key.sub=value ...]

`key.sub=value` overrides any config field (values are YAML; dotted keys reach into mapping fields,
e.g. `model.base.n_layer=1`). `--resume` continues DIR's newest complete checkpoint; `--overwrite`
replaces a run already in DIR. Launchers that add `--local_rank=N` (deepspeed) are accepted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tempnet.config import load_config

__all__ = ["build_parser", "parse"]


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
