"""Export workers (the jobs issue builds this out)."""

from __future__ import annotations

from typing import Any


class _NoWorker:
    def stop(self) -> None:
        return None


def start_in_process(ctx: Any) -> Any:
    """Start this process's worker thread; return a handle with stop()."""
    return _NoWorker()
