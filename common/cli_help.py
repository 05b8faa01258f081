"""One ``--help`` style for every command: each flag says what it means, its default and its choices."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's line breaks, and appends ``(default: X)`` to a value flag whose
    help does not already say its default (argparse shows choices itself, as ``{a,b}``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text.lower() and action.option_strings and action.nargs != 0
                and action.default not in (None, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text
