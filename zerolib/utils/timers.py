"""Wall-clock timers for ``wall_clock_breakdown``: forward, backward, step."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StepTimers:
    """Accumulates seconds per phase between :meth:`reset` calls."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()

    def summary(self) -> str:
        return " | ".join(f"{name}: {secs * 1000:.1f} ms" for name, secs in self.seconds.items())
