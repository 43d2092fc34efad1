"""What every command shares at its edges: the name its usage line shows, help that states each default, one
line instead of a traceback when a third-party module is missing, and a quiet end when its reader stops.

Standard library only, and imported before anything else: the missing-module line must print in an
interpreter that has none of cnnserve's dependencies (a venv that is not activated).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def program_name() -> str:
    """How the user started this command, for its usage line: what `cnnserve` put in sys.argv[0] ('cnnserve
    client'), else `python -m server.client` for a module run with -m, else the script's file name."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if not Path(sys.argv[0]).is_file():      # a name, not a path: `cnnserve` chose it
        return sys.argv[0]
    if main_spec is not None:
        return f"python -m {main_spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` to an option's help, unless X says nothing (None, False, '') or the help
    already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == "" or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@contextmanager
def exit_if_missing(extra: str) -> Iterator[None]:
    """Around a command's imports: a third-party module that is not installed ends the program with one
    line (which module, which interpreter, the fix: the virtual environment, or `pip install
    'cnnserve[extra]'`) instead of a traceback. A module whose top-level package exists (cnnserve's own
    modules, a half-installed package) is a bug or a broken install: its traceback is kept.

    It ends the program even when a library imported the module: without it the import fails anyway."""
    try:
        yield
    except ModuleNotFoundError as error:
        top = (error.name or "").partition(".")[0]
        if not top or importlib.util.find_spec(top) is not None:
            raise
        venv = CHECKOUT / ".venv" / "bin" / "activate"
        activate = f"source {venv}" if venv.is_file() else "activate the virtual environment cnnserve is installed in"
        sys.exit(f"error: {sys.executable} cannot import {top!r}: {activate}, or install this command's "
                 f"dependencies: pip install 'cnnserve[{extra}]'")


@contextmanager
def quiet_when_stdout_closes() -> Iterator[None]:
    """Around what a command prints: a reader that stops early (`| head`) ends it with status 141 (128 +
    SIGPIPE, as the shell reports any tool that SIGPIPE ended) and no BrokenPipeError traceback."""
    try:
        yield
        sys.stdout.flush()      # what is still buffered fails here, not at exit where it cannot be caught
    except BrokenPipeError:
        # Python flushes stdout once more at exit: point the descriptor at /dev/null so that flush succeeds.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
