"""Every sub-command follows docs/cli.md: the shared options mean the same thing and are checked when parsed."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from htsr.cli import common as C
from htsr.cli.main import build_parser, command_packages


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = (*prefix, name)
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, path)
                else:
                    yield path, sub


PARSER = build_parser()
COMMANDS = dict(_commands(PARSER))


def test_every_method_package_registers_commands():
    assert {"spectra", "pruning", "tempbalance", "theory", "memorization", "landscape", "diagnosis"} <= set(
        command_packages())


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p))
def test_help_renders_and_shared_options_follow_the_convention(path):
    sub = COMMANDS[path]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        PARSER.parse_args([*path, "--help"])
    assert e.value.code == 0 and "usage:" in buf.getvalue()
    for a in sub._actions:
        opts = set(a.option_strings)
        if "--json" in opts:
            assert a.nargs == 0, f"{path}: --json must be a switch (stdout JSON), not a path"
        if "--out" in opts or "-o" in opts:
            assert a.type is not None and a.type.__name__ == "file" and a.metavar == "FILE", \
                f"{path}: -o/--out must be a FILE whose extension picks the format (add_out)"
            assert {"-o", "--out"} <= opts, f"{path}: --out must also be -o"
        if "--out-dir" in opts:
            assert a.type is C.out_dir and a.metavar == "DIR", f"{path}: --out-dir must use add_out_dir"
        if "--threads" in opts:
            assert a.type is C.positive_int and a.default is None, f"{path}: --threads must use add_threads"
        if "--set" in opts:
            assert a.dest == "overrides" and a.type is C.key_value, f"{path}: --set must use add_set"
        if "--seed" in opts:
            assert a.type is C.nonneg_int, f"{path}: --seed must be a non-negative integer (add_seed)"
        if "--device" in opts:
            assert a.type is C.device, f"{path}: --device must be checked against the machine (add_device)"
        if "--plot" in opts:
            assert a.type is C.out_dir or getattr(a.type, "__name__", "") == "file", f"{path}: --plot via add_plot"


def test_command_map_matches_discovery():
    """``htsr CMD`` builds only CMD's package parser; the static map must name every discovered command's package."""
    import argparse
    import importlib

    from htsr.cli.main import COMMANDS, build_parser, command_packages

    found = {}
    for n in command_packages():
        p = argparse.ArgumentParser()
        sub = p.add_subparsers()
        importlib.import_module(f"htsr.{n}.cli").register(sub)
        found.update({c: n for c in sub.choices})
    assert COMMANDS == found
    sub = next(a for a in build_parser("report")._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["report"]
