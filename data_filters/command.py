"""The contract every argparse front end of aotrain keeps (`aotrain filter ...`, export, robustness, sync).

    def select_main(argv=None) -> int:
        return run_command(_select_parser(), _select, argv)     # _select(args) does the work, prints, returns 0

- `--help`: the parser's help, exit 0; a bad or missing flag: argparse's usage and error, exit 2;
- a user mistake the work raises (a missing or unreadable file, a bad value, an unreachable
  target: ValueError, OSError, tarfile.TarError, ImportError for an optional dependency): one line
  `PROG: error: MESSAGE` on stderr, no traceback, exit 2. Outputs are written atomically
  (data_filters/files.py), so such a stop leaves nothing half-written.
- anything else is a bug in aotrain, and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from typing import Callable

USER_ERRORS = (ValueError, OSError, tarfile.TarError, ImportError)


def run_command(parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) with `parser` and run `work(args)`; returns the exit code."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the help (0) or the usage and the error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return work(args) or 0
    except USER_ERRORS as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
