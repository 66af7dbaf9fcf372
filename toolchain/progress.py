"""The one progress-bar helper of edgec: rich bars on stderr, silent when stderr is not a terminal.

Everything that can take more than a couple of seconds (training and fine-tuning
epochs, calibration, the search, uploads, benchmark runs, packing a release,
probing models) reports through ``progress`` / ``track`` here, so bars look the
same everywhere and never pollute logs, pipes or ``--json`` output: bars go to
stderr and only when stderr is a TTY. ``EDGEC_PROGRESS=0`` turns them off,
``EDGEC_PROGRESS=1`` forces them on (for demos recorded through a pipe).

Usage::

    with progress("calibrating", total=len(batches)) as bar:
        for batch in batches:
            ...
            bar.advance()

    for path in track(files, "hashing"):
        ...

    model.fit(..., callbacks=[keras_progress("fine-tuning", epochs)], verbose=0)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "EDGEC_PROGRESS"


def _forced() -> bool | None:
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def progress_enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal, unless ``EDGEC_PROGRESS`` says otherwise."""
    forced = _forced()
    if forced is not None:
        return forced
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Bar:
    """A handle on one bar; a no-op when bars are off, so callers never branch."""

    def __init__(self, rich_progress: Any = None, task: Any = None) -> None:
        self._progress = rich_progress
        self._task = task
        self.completed = 0.0

    def advance(self, amount: float = 1.0) -> None:
        self.completed += amount
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        if completed is not None:
            self.completed = completed
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, **fields)


@contextmanager
def progress(description: str, total: float | None = None, *, unit: str = "") -> Iterator[Bar]:
    """A bar for one step; ``total=None`` shows a spinner. Transient: it vanishes when done."""
    if not progress_enabled():
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("[progress.description]{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
        if unit:
            columns.append(TextColumn(unit))
        columns.append(TimeRemainingColumn())
    columns.append(TimeElapsedColumn())
    # Forced on through a pipe, rich must still draw (it only animates real terminals).
    console = Console(stderr=True, force_terminal=True if _forced() else None)
    with Progress(*columns, console=console, transient=True) as rich_progress:
        task = rich_progress.add_task(description, total=total)
        yield Bar(rich_progress, task)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a bar; the length is taken from ``items`` when it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total=total) as bar:
        for item in items:
            yield item
            bar.advance()


def keras_progress(description: str, epochs: int) -> Any:
    """A Keras callback with one bar over epochs (show loss/accuracy); pass ``verbose=0`` to fit.

    Built lazily so that importing this module does not import Keras.
    """
    import keras

    class _EpochBar(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._cm: Any = None
            self._bar = Bar()

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self._cm = progress(description, total=epochs, unit="epochs")
            self._bar = self._cm.__enter__()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            shown = ", ".join(
                f"{k} {float(v):.4g}" for k, v in sorted((logs or {}).items()) if k in _SHOWN
            )
            self._bar.update(description=f"{description} ({shown})" if shown else description)
            self._bar.advance()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = None

    return _EpochBar()


_SHOWN = {"loss", "accuracy", "val_loss", "val_accuracy"}
