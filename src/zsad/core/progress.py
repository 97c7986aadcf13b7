"""Progress bars on the terminal (rich), shared by the commands and the demo."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Advance:
    """A callable that advances a rich progress task; ``total(n)`` sets its length."""

    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def __call__(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def total(self, n: int) -> None:
        self._progress.update(self._task, total=n)

    def info(self, text: str) -> None:
        self._progress.update(self._task, info=text)


@contextlib.contextmanager
def progress_bar(console, description: str) -> Iterator[_Advance]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as progress:
        task = progress.add_task(description, total=None, info="")
        try:
            yield _Advance(progress, task)
        except BaseException:
            progress.live.transient = True  # a failed run's bar goes: the one error line stands alone
            raise

