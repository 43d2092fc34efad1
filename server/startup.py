"""Why the server cannot start: one typed error, raised wherever the cause is found (a flag, a port, a
file), and one place that turns it into one line on stderr (`error: ...`, exit status 1) for both
entry points, `python -m server` and each `--workers` process."""
from __future__ import annotations

import sys
from collections.abc import Callable


class StartupError(Exception):
    """A start-up failure the user can fix; the message says what and how, without a traceback."""


def exit_on_startup_error(run: Callable[[], None]) -> None:
    """Run `run()`; a start-up error (ours, a model repository's, an unavailable execution provider) ends the
    process with its one-line message instead of a traceback."""
    from cnnserve.repository import RepositoryError
    from server.runtime import ProviderUnavailable
    try:
        run()
    except (StartupError, RepositoryError, ProviderUnavailable) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
