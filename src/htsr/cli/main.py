"""The ``htsr`` command: sub-commands found in the method packages, and the one error rule.

Each package ``htsr/<name>/`` that has a ``cli.py`` with ``register(subparsers)`` contributes its sub-commands;
a new method adds its folder and nothing here. Exit codes (docs/cli.md):

* 0: the command ran (individual layers or cells may still be failed/skipped, see their status);
* 1: the measurement failed (:class:`~htsr.errors.MeasurementError`: diverged, non-finite loss, every method of
  a comparison failed, no layer could be analysed);
* 2: bad usage or input (argparse errors and every other :class:`~htsr.errors.HtsrError`, unreadable files);
* 70: a bug in htsr (the traceback is shown with a request to report it);
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from htsr._version import __version__

log = logging.getLogger("htsr.cli")

#: Packages whose sub-commands come first in ``htsr --help`` (the rest follow in alphabetical order).
FIRST = ("spectra",)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 70, 130


def command_packages() -> list[str]:
    """The ``htsr`` sub-packages that have a ``cli`` module, in help order."""
    import htsr

    names = [m.name for m in pkgutil.iter_modules(htsr.__path__) if m.ispkg and m.name != "cli"]
    found = [n for n in names if importlib.util.find_spec(f"htsr.{n}.cli") is not None]
    return sorted(found, key=lambda n: (n not in FIRST, FIRST.index(n) if n in FIRST else 0, n))


#: Which package registers each top-level command, so that ``htsr CMD ...`` imports only that package's CLI (start-up
#: of a few tenths of a second instead of importing every method); ``tests/test_cli_convention.py`` checks it
#: against the full discovery, so a new command that is missing here still works (through the full parser).
COMMANDS: dict[str, str] = {
    "analyze": "spectra", "describe": "spectra", "smooth": "spectra", "mdtree": "diagnosis",
    "sharpbalance": "ensembles", "landscape": "landscape", "lora": "lora", "tinymem": "memorization",
    "phish": "phishing", "prune": "pruning", "perplexity": "pruning", "regimes": "regimes", "report": "report",
    "tempbalance": "tempbalance", "theory": "theory",
}


def _command_of(argv: Sequence[str] | None) -> str | None:
    """The package of the command ``argv`` names (its first argument), when known; None otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    return COMMANDS.get(args[0]) if args and not args[0].startswith("-") else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``htsr`` parser: every package's commands, or only package ``only``'s (what one command needs)."""
    p = argparse.ArgumentParser(prog="htsr", description="Heavy-tailed self-regularisation diagnostics and the "
                                                         "methods built on them. Exit codes: 0 ran, 1 the "
                                                         "measurement failed, 2 bad usage or input, 70 a bug, "
                                                         "130 interrupted.")
    p.add_argument("--version", action="version", version=f"htsr {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [only] if only else command_packages():
        importlib.import_module(f"htsr.{name}.cli").register(sub)
    return p


def _oserror_text(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command under the error rule (see the module docstring); returns the exit code."""
    from htsr.cli.common import check_outputs, error, set_threads
    from htsr.errors import HtsrError, MeasurementError

    try:
        check_outputs(args)
        set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nhtsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `htsr analyze ... | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the interpreter's flush at exit)
        except OSError:
            pass
        return EXIT_OK
    except MeasurementError as e:
        return error(str(e), EXIT_FAILED)
    except HtsrError as e:
        return error(str(e), EXIT_USAGE)
    except OSError as e:
        return error(_oserror_text(e), EXIT_USAGE)
    except Exception:
        traceback.print_exc()
        print(f"htsr: internal error: this is a bug in htsr {__version__}; please report it with the command "
              "line and the traceback above", file=sys.stderr)
        return EXIT_BUG


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("\nhtsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    logging.basicConfig(level=logging.WARNING, format="htsr: %(levelname)s: %(message)s")  # CLI only
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
