"""`hf-gqa`: convert checkpoints to grouped-query attention and inspect the results.

The CLI is a table of commands, one module each (`COMMANDS`), over library functions. Errors caused by the input
(a bad --groups, an unsupported model, a missing checkpoint, an existing output folder) print one line and exit with
status 2; nothing is left half-written.
"""

import argparse
import signal
import sys

from transformers.utils import logging as hf_logging

from .. import report
from .._version import __version__
from ..errors import HfGqaError
from ..io.output import Terminated, sigterm_as_interrupt
from . import convert, demo, fold, info, listing, push
from . import eval as eval_command
from .convert import CONVERT_KEYS, load_convert_config

# command -> its module (`add_parser(subparsers)`, `run(args) -> exit status`), in `--help` order
COMMANDS = {
    "convert": convert,
    "fold": fold,
    "info": info,
    "eval": eval_command,
    "push": push,
    "list": listing,
    "demo": demo,
    "report": report,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-gqa", description="Convert multi-head-attention checkpoints to grouped-query attention."
    )
    parser.add_argument("--version", action="version", version=f"hf-gqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hf_logging.set_verbosity_error()  # keep transformers' progress bars, drop its advisory warnings
    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: temporary folders are removed
            return COMMANDS[args.command].run(args)
    except HfGqaError as error:
        print(f"hf-gqa: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("hf-gqa: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("hf-gqa: interrupted; nothing was written", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "CONVERT_KEYS", "build_parser", "load_convert_config", "main"]


if __name__ == "__main__":
    sys.exit(main())
