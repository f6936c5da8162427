"""One progress bar for every long loop (rich), silenced for --json output and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Progress goes to stderr so `--json` output on stdout stays machine-readable.
console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``tick(n=1, description=None)``; draws a bar with elapsed and remaining time when enabled.

    The bar is transient: when the work ends (or fails) it disappears, so an error message stays the
    only line a failed command prints.
    """
    if not enabled:
        yield lambda n=1, description=None: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as prog:
        task = prog.add_task(description, total=total)

        def tick(n: int = 1, description: str | None = None) -> None:
            prog.update(task, advance=n, **({"description": description} if description else {}))

        yield tick
