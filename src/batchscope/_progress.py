"""
A progress bar for ``scope.map(..., progress=True)``, drawn by rich.

rich refreshes the bar from its own thread, so it works the same under asyncio and Trio
(unlike ``tqdm.asyncio``); the map only calls :meth:`ProgressBar.advance` as it hands
out results. It draws on stderr, so it never mixes with a program's output.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A live bar: items done out of the total (when the source has a length)."""

    def __init__(self, total: int | None, description: str) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            raise ImportError(
                "map(progress=True) draws with rich: pip install 'batchscope[progress]'"
            ) from None
        self._progress: Any = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def advance(self) -> None:
        """One more item handed out."""
        self._progress.advance(self._task)

    def close(self) -> None:
        """Draw the final state and stop refreshing."""
        self._progress.stop()
