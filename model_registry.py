"""The models directory as a registry: which model serves, how it got there, and the way back.

``<models-dir>/latest`` is a symlink to the model that serves (a daemon started with
``--model-dir <models-dir>/latest`` follows it). Every change of it goes through here and is
recorded in ``<models-dir>/promotions.json``:

* :func:`point_latest` is the one way ``latest`` moves (one atomic symlink swap, recorded; ``main.py
  train`` uses it, action "trained");
* :func:`promote` points ``latest`` at a gated model, records where it
  came from, and prunes old model folders beyond ``MODELS_KEEP`` (never the one serving nor the
  one a rollback would return to);
* :func:`rollback` (``python main.py rollback``) points ``latest`` back at the model the current
  one replaced.

Every change (the move of ``latest`` and its entry in ``promotions.json``) is made while holding an
exclusive ``flock`` on ``<models-dir>/.promotions.lock`` and written by atomic replace, so two writers
(a retrain's promotion and an operator's rollback) never lose an entry nor leave half a file.

    python main.py rollback --models-dir models
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common_utils import atomic_write_json, read_json
from config import LATEST_MODEL_LINK, MODEL_DIR_PREFIX, MODELS_DIR, MODELS_KEEP, REGISTRY, RETRAIN_DOC
from errors import ToolkitError

logger = logging.getLogger(__name__)


class RegistryError(ToolkitError, RuntimeError):
    """A registry operation that cannot be done (the message says why and what to do)."""


def current_model(models_dir: Path) -> Path | None:
    """The folder ``latest`` points at, or None."""
    link = models_dir / LATEST_MODEL_LINK
    if not link.is_symlink() and not link.exists():
        return None
    target = link.resolve()
    return target if target.is_dir() else None


def history(models_dir: Path) -> list[dict[str, Any]]:
    """The recorded promotions, rejections and rollbacks, oldest first."""
    path = models_dir / REGISTRY.promotions_file
    return list(read_json(path)) if path.is_file() else []


_held = threading.local()  # the lock files this thread holds (the lock nests: promote -> point_latest -> record)


@contextmanager
def registry_lock(models_dir: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (``flock`` on ``<models-dir>/.promotions.lock``); blocks until free.

    Every read-modify-write of ``promotions.json`` and every move of ``latest`` happens inside it, in
    any process, so two writers never lose an entry. Re-entrant within one thread (a second ``flock``
    through a new descriptor would wait for the first forever).
    """
    # one key per folder, however named
    path = os.path.join(os.path.realpath(models_dir), REGISTRY.promotions_lock_file)
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    models_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _record(models_dir: Path, event: dict[str, Any]) -> None:
    with registry_lock(models_dir):
        _append(models_dir, event)


def _append(models_dir: Path, event: dict[str, Any]) -> None:
    events = history(models_dir)
    events.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), **event})
    atomic_write_json(models_dir / REGISTRY.promotions_file, events)


def _point_latest(models_dir: Path, model_dir: Path) -> None:
    """Atomic symlink swap: a reader sees the old model or the new one, never neither."""
    link = models_dir / LATEST_MODEL_LINK
    tmp = models_dir / f".{LATEST_MODEL_LINK}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(model_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def previous_model(models_dir: Path) -> Path | None:
    """The model the serving one replaced (where a rollback goes), if it still exists."""
    current = current_model(models_dir)
    if current is None:
        return None
    for event in reversed(history(models_dir)):
        if event.get("action") in ("promoted", "trained", "rolled_back") and event.get("model") == current.name:
            previous = event.get("previous")
            if previous and (models_dir / previous).is_dir():
                return models_dir / previous
            return None
    return None


def point_latest(model_dir: Path, action: str = "trained", summary: str | None = None) -> Path | None:
    """Point ``latest`` (beside ``model_dir``) at it and record the move; the model it replaced, if any.

    ``main.py train`` moves it this way too ("trained", no gate), so a rollback also undoes a manual
    training.
    """
    models_dir = model_dir.parent
    with registry_lock(models_dir):
        previous = current_model(models_dir)
        _point_latest(models_dir, model_dir)
        _record(models_dir, {"action": action, "model": model_dir.name,
                             "previous": previous.name if previous else None, "summary": summary})
    return previous


def promote(models_dir: Path, model_dir: Path, report: dict[str, Any] | None = None,
            keep: int = MODELS_KEEP) -> Path | None:
    """Make ``model_dir`` the serving model, prune beyond ``keep``; the one it replaced (None: none)."""
    with registry_lock(models_dir):
        previous = point_latest(models_dir / model_dir.name, "promoted", (report or {}).get("decision"))
        logger.info("promoted %s (was %s)", model_dir.name, previous.name if previous else "none")
        prune(models_dir, keep)
    return previous


def record_rejection(models_dir: Path, challenger: str, report: dict[str, Any]) -> None:
    """Note a challenger the gate kept out (its folder is removed by the caller)."""
    with registry_lock(models_dir):
        _record(models_dir, {"action": "rejected", "model": challenger,
                             "previous": (current_model(models_dir) or Path("none")).name,
                             "summary": report.get("decision")})


def record_refusal(models_dir: Path, report: dict[str, Any]) -> None:
    """Note a retrain the gate refused before training (no challenger was made: the fleet changed too much)."""
    with registry_lock(models_dir):
        _record(models_dir, {"action": "refused", "model": None,
                             "previous": (current_model(models_dir) or Path("none")).name,
                             "summary": report.get("decision")})


def rollback(models_dir: Path) -> tuple[Path, Path]:
    """Point ``latest`` back at the model the serving one replaced; (restored, replaced)."""
    with registry_lock(models_dir):
        return _rollback(models_dir)


def _rollback(models_dir: Path) -> tuple[Path, Path]:
    current = current_model(models_dir)
    if current is None:
        raise RegistryError(f"{models_dir / LATEST_MODEL_LINK} does not point at a model, so there is nothing to "
                            f"roll back. Fix: train one (python main.py train) or check --models-dir. "
                            f"See {RETRAIN_DOC}.")
    previous = previous_model(models_dir)
    if previous is None:
        raise RegistryError(f"{current.name} serves, and no earlier model it replaced is recorded in "
                            f"{models_dir / REGISTRY.promotions_file} (or that folder was pruned). Fix: point "
                            f"{LATEST_MODEL_LINK} at a model folder by hand. See {RETRAIN_DOC}.")
    _point_latest(models_dir, previous)
    _record(models_dir, {"action": "rolled_back", "model": previous.name, "previous": current.name})
    logger.info("rolled back: %s serves again (replacing %s)", previous.name, current.name)
    return previous, current


def prune(models_dir: Path, keep: int = MODELS_KEEP) -> list[str]:
    """Remove model folders beyond the ``keep`` newest; never the serving one or its predecessor."""
    protected = {p.name for p in (current_model(models_dir), previous_model(models_dir)) if p is not None}
    folders = sorted((p for p in models_dir.glob(f"{MODEL_DIR_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
    removed = []
    for folder in folders[:-keep] if keep > 0 else folders:
        if folder.name in protected:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    if removed:
        logger.info("pruned %d old model folder(s) beyond the %d kept: %s", len(removed), keep, ", ".join(removed))
    return removed


# ---------------------------------------------------------------------------- CLI (rollback)
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``main.py rollback``: restore the model the serving one replaced."""
    parser = parser or argparse.ArgumentParser(description="Roll the serving model back to the previous one.")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help=f"folder holding the model folders and '{LATEST_MODEL_LINK}' (default: models)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Roll back; 0 on success; raises :class:`RegistryError` with the reason otherwise (exit 2: nothing to roll
    back to in that models directory, ``errors.run_cli``)."""
    restored, _ = rollback(args.models_dir)
    logger.info("%s now points at %s; a daemon following it picks it up within seconds",
                args.models_dir / LATEST_MODEL_LINK, restored.name)
    return 0
