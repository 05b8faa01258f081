"""Every command's ``--help`` tells each flag's meaning, its default and its choices."""

from __future__ import annotations

import argparse
import importlib

import pytest

COMMANDS = ["frontend.compile", "frontend.make_model", "frontend.demo", "runtime.generate", "runtime.chat",
            "runtime.serve", "runtime.tune", "lowering.dump"]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The command's parser, caught as its main() parses (nothing runs)."""

    def catch(self, *_a, **_kw):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Parsed) as e:
        importlib.import_module(module).main([])
    return e.value.parser


@pytest.mark.parametrize("module", COMMANDS)
def test_help_explains_every_flag(module, monkeypatch):
    parser = _parser(module, monkeypatch)
    text = parser.format_help()
    assert parser.prog == f"python -m {module}"
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        helptext = parser._get_formatter()._expand_help(action) if action.help else ""
        if not helptext:
            missing.append(f"{name}: no help text")
        elif action.option_strings and action.nargs != 0 and not action.required and "default" not in helptext.lower():
            missing.append(f"{name}: help does not say the default")
        if action.choices and "{" + ",".join(map(str, action.choices)) + "}" not in text:
            missing.append(f"{name}: choices not shown")
    assert not missing, f"{module}: {missing}"
