"""``sealedbus ... --help`` for every subcommand: each argument has help, each option that has a
default says it (with its unit for times), and no raw docstring markup shows."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from sealedbus.ops.cli import build_parser, main

_NO_DEFAULT_NEEDED = (
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._StoreTrueAction,
    argparse._SubParsersAction,
)


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                assert name in helped, f"sealedbus {' '.join((*path, name))} has no help line"
                yield from commands(sub, (*path, name))


ALL = list(commands(build_parser()))


def test_the_walk_reaches_every_command() -> None:
    names = {" ".join(path) for path, _ in ALL}
    for expected in ("kds serve", "admin token", "admin topic create", "admin session open"):
        assert expected in names
    assert len(names) >= 20


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[" ".join(p) or "sealedbus" for p, _ in ALL])
def test_every_argument_has_help_and_shows_its_default(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        where = f"sealedbus {' '.join(path)} {name}"
        assert action.help and action.help.strip(), f"{where}: no help text"
        if isinstance(action, _NO_DEFAULT_NEEDED) or action.required:
            continue
        if action.option_strings and action.default not in (None, argparse.SUPPRESS):
            assert "default" in action.help, f"{where}: the default is not shown"
        if action.option_strings and action.metavar == "SECONDS" and action.default is not None:
            assert " s" in action.help, f"{where}: the unit is not shown"
    text = parser.format_help()
    assert "``" not in text, f"sealedbus {' '.join(path)} --help shows raw markup"


def test_options_without_a_default_say_so_too() -> None:
    """Optional values with no default say what happens without them (e.g. 'no default')."""
    for path, parser in ALL:
        for action in parser._actions:
            if (
                action.option_strings
                and not isinstance(action, _NO_DEFAULT_NEEDED)
                and not action.required
                and action.default is None
            ):
                assert "default" in (action.help or ""), (path, action.option_strings)


def test_bench_help_has_the_round_count_and_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    assert "default: 5, or 1 with --quick" in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["kds", "serve"], ["default: 127.0.0.1", "default: 8443", "default: 1 s", "10 s"]),
        (["kds", "serve"], ["default: 3600 s", "default: 10)", "default: 900 s"]),
        (["admin", "topic", "create"], ["3600 s", "604800 s", "default: x25519"]),
        (["admin", "token"], ["10 to 86400 s", "default: 900 s"]),
        (["admin"], ["default: admin.key", "$SEALEDBUS_KDS_CA", "--totp-file", "--session"]),
    ],
)
def test_the_defaults_the_report_missed_are_shown(
    command: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in expected:
        assert text in out, text
