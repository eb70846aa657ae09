"""One error type for the whole toolkit, and one exit-code convention for every command.

Every error a person can meet says what happened, why it matters, how to fix it and which doc to
read. :class:`ToolkitError` carries those four parts as fields and renders them the way the
project always has::

    <what>. Why it matters: <why>. Fix: <fix>. See <doc>.

(only the parts given; a ``ToolkitError("free text")`` renders as the text itself). It also carries
the process exit code of the command it ends, by the convention below. Every project exception class
derives from it; those that callers also catch as ``ValueError``, ``RuntimeError`` or ``KeyError``
keep that builtin as a second base.

Exit codes (README.md, Exit codes), the same for every ``main.py`` command:

* 0 ``EXIT_OK``: done as asked (``retrain``: a decision was made, promoted or not).
* 1 ``EXIT_NEGATIVE``: the command ran and its verdict is negative (``validate``: the data breaks
  the contract).
* 2 ``EXIT_USAGE``: usage or input: a bad flag or value (argparse's own 2), an input file, mapping,
  key file or model directory that is missing, unreadable, malformed or over a read limit.
* 3 ``EXIT_RUNTIME``: the environment failed the command: the daemon or Prometheus unreachable or
  refusing, the metrics store damaged or full, a write that failed (disk full), out of memory, a
  child process that died, records left undelivered at stop.
* 70 ``EXIT_SOFTWARE`` (sysexits EX_SOFTWARE): a bug; the traceback is printed.
* 75 ``RETRAIN_EXIT_LOCKED`` (sysexits EX_TEMPFAIL): ``retrain`` skipped, another one holds the lock.
* 128 + n: stopped by signal n (130 for Ctrl-C).

:func:`run_cli` is the one place that turns an exception into an exit code: ``main.py``'s dispatch
and every module's ``__main__`` entry call it, and ``run_from_args`` functions just raise.
"""

from __future__ import annotations

import argparse
import errno
import logging
from collections.abc import Callable

from config import RETRAIN_EXIT_LOCKED

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_SOFTWARE = 70
EXIT_LOCKED = RETRAIN_EXIT_LOCKED
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + 2  # SIGINT

# OSErrors that mean "the path you gave is wrong" rather than "the machine failed".
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def render_message(what: str, why: str | None = None, fix: str | None = None, doc: str | None = None) -> str:
    """The project's one rendering of a message for a person: ``<what>. Why it matters: <why>. Fix: <fix>.
    See <doc>.``, with the parts given (``what`` alone is returned as it is)."""
    if not (why or fix or doc):
        return what
    parts = [f"{what}."]
    if why:
        parts.append(f"Why it matters: {why}.")
    if fix:
        parts.append(f"Fix: {fix}.")
    if doc:
        parts.append(f"See {doc}.")
    return " ".join(parts)


class ToolkitError(Exception):
    """An error for a person: what happened, why it matters, how to fix it, which doc; and an exit code.

    ``exit_code`` is the class's default (``EXIT_USAGE`` here; subclasses set their own) unless given.
    ``log_level`` is how :func:`run_cli` logs it (a skip is a warning, not an error).
    """

    exit_code: int = EXIT_USAGE
    log_level: int = logging.ERROR

    def __init__(self, what: str, why: str | None = None, fix: str | None = None, doc: str | None = None, *,
                 exit_code: int | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        self.doc = doc
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.render())

    def render(self) -> str:
        """``<what>. Why it matters: <why>. Fix: <fix>. See <doc>.`` with the parts given."""
        return render_message(self.what, self.why, self.fix, self.doc)

    def __str__(self) -> str:  # also for subclasses with a KeyError base, which would quote the message
        return self.render()


class UsageError(ToolkitError, ValueError):
    """A flag or value a command cannot use (exit 2); a ``ValueError`` too, for callers that catch that."""


class RuntimeFailure(ToolkitError, RuntimeError):
    """The environment failed a command: a process died, a service did not answer (exit 3)."""

    exit_code = EXIT_RUNTIME


class MissingFileError(ToolkitError, FileNotFoundError):
    """An input file that is not there (exit 2); a ``FileNotFoundError`` too, for callers that catch that."""


def exit_code_of(exc: BaseException) -> int:
    """The convention's exit code for ``exc`` (``EXIT_SOFTWARE`` for what is not an expected failure)."""
    if isinstance(exc, ToolkitError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        wrong_path = isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))
        return EXIT_USAGE if wrong_path or exc.errno in _INPUT_ERRNOS else EXIT_RUNTIME
    if isinstance(exc, MemoryError):
        return EXIT_RUNTIME
    if isinstance(exc, ValueError):  # the modules' and the readers' (pandas, pyarrow) word for a bad value
        return EXIT_USAGE
    return EXIT_SOFTWARE


def run_cli(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, failed: str | None = None) -> int:
    """Run a command's ``run_from_args``; its return value, or the exit code of what it raised.

    A :class:`ToolkitError`, an ``OSError`` (a missing file, a full disk), ``MemoryError`` and a plain
    ``ValueError`` (a bad value) are logged as one line, ``<failed>: <message>``, without a traceback:
    the message is the explanation. Ctrl-C exits 130 quietly. Anything else is a bug: logged with its
    traceback, exit ``EXIT_SOFTWARE``. ``failed`` defaults to ``"<module> failed"``.
    """
    module = getattr(func, "__module__", None) or __name__
    log = logging.getLogger(module)
    failed = failed or f"{module} failed"
    try:
        return int(func(args))
    except KeyboardInterrupt:
        log.info("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place exceptions become exit codes
        code = exit_code_of(exc)
        if code == EXIT_SOFTWARE:
            log.exception("%s: unexpected %s (a bug: please report it with this traceback)", failed,
                          type(exc).__name__)
        elif isinstance(exc, ToolkitError) and exc.log_level < logging.ERROR:
            log.log(exc.log_level, "%s", exc)
        else:
            log.error("%s: %s", failed, exc)
            log.debug("traceback of the error above", exc_info=exc)
        return code
