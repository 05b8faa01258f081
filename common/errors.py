"""User-facing errors: one clear line, no traceback.

Anything a user can cause (a bad path, a broken file, a wrong flag) raises ``UserError``; every
command-line entry point runs under ``cli_main`` which prints ``error: <message>`` and exits 2.
Bugs still raise ordinary exceptions, so they keep their tracebacks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input, files or machine, described in one line."""


def cli_main(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `... | head`: the reader left; stop quietly like other Unix tools
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

    return wrapped
