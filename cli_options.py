"""Settings declared once: a dataclass field that is also its command-line flag.

A settings dataclass (``TrainSettings``, ``DaemonSettings``, ...) declares each knob with
:func:`option`: the default (a ``config.py`` name), the help text and, where the flag is not the
plain ``--field-name``, how the command line spells it. :func:`add_options` turns the fields into
``argparse`` arguments and :func:`settings_from` builds the dataclass back from the parsed
namespace, so a knob is written in exactly one place besides its ``config.py`` default::

    @dataclass
    class TrainSettings:
        epochs: int = option(TRAINER.max_epochs, "maximum epochs (early stopping may end sooner)")
        backtest: bool = option(True, "skip the post-training backtest", flag="--no-backtest")

A field declared with plain ``field()`` (or a bare default) has no flag: it is set by code
(``hide_profiles``, ``warm_start``) rather than by a user.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

_CLI = "cli"  # the field-metadata key of a flag declaration

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one settings field appears on the command line.

    ``flag``: the option string (default ``--<field-name>``). A boolean field whose default is
    True gets a ``--no-...`` flag that stores False, one whose default is False a flag that stores
    True. ``parse`` converts the text (a type or a function raising ``argparse.ArgumentTypeError``
    or ``ValueError``); ``repeat`` collects every occurrence into a list; ``off`` adds a second flag
    ``(option string, value, help)`` that sets the field to ``value`` (``--no-statistical``).
    """

    help: str
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None
    repeat: bool = False
    off: tuple[str, Any, str] | None = None


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           flag: str | None = None, parse: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None, repeat: bool = False, off: tuple[str, Any, str] | None = None) -> Any:
    """A dataclass field with a command-line flag (see :class:`Flag`); ``factory`` for a mutable default."""
    meta = {_CLI: Flag(help=help, flag=flag, parse=parse, choices=choices, metavar=metavar, repeat=repeat, off=off)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flagged_fields(settings_type: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``settings_type`` that have a command-line flag, in declaration order."""
    return [f for f in dataclasses.fields(settings_type) if _CLI in f.metadata]


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def option_string(f: dataclasses.Field[Any]) -> str:
    """The flag of field ``f``: its declared spelling, else ``--no-x`` / ``--x`` from the name."""
    spec: Flag = f.metadata[_CLI]
    if spec.flag:
        return spec.flag
    name = f.name.replace("_", "-")
    return f"--no-{name}" if _default_of(f) is True else f"--{name}"


def add_options(parser: argparse.ArgumentParser, settings_type: type, *, skip: Iterable[str] = (),
                defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """Add one argument per flagged field of ``settings_type`` (``skip``: field names left out;
    ``defaults``: field -> a default other than the declared one, e.g. the retrainer's epochs)."""
    skipped, overrides = set(skip), dict(defaults or {})
    for f in flagged_fields(settings_type):
        if f.name in skipped:
            continue
        spec: Flag = f.metadata[_CLI]
        default = overrides.get(f.name, _default_of(f))
        shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
        hidden = shown is None or shown is True or shown is False or shown == ""
        text = spec.help + ("" if hidden else f" (default {shown})".replace("%", "%%"))
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": text}
        if isinstance(_default_of(f), bool):
            kwargs["action"] = "store_false" if _default_of(f) else "store_true"
            kwargs["help"] = spec.help
        else:
            if spec.repeat:
                kwargs["action"] = "append"
                kwargs["default"] = list(default or [])
            if spec.parse is not None:
                kwargs["type"] = spec.parse
            if spec.choices is not None:
                kwargs["choices"] = list(spec.choices)
            if spec.choices is None:
                kwargs["metavar"] = spec.metavar or option_string(f).lstrip("-").replace("-", "_").upper()
        parser.add_argument(option_string(f), **kwargs)
        if spec.off is not None:
            off_flag, value, off_help = spec.off
            parser.add_argument(off_flag, dest=f.name, action="store_const", const=value, help=off_help)
    return parser


def settings_from(settings_type: type[T], args: argparse.Namespace, **computed: Any) -> T:
    """``settings_type`` built from the parsed flags of its fields; ``computed``: fields set from
    something other than their own flag (a key read from the environment, validated URLs)."""
    values = {f.name: getattr(args, f.name) for f in flagged_fields(settings_type)
              if hasattr(args, f.name) and f.name not in computed}
    return settings_type(**values, **computed)
