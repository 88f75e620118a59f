"""`comms_logger`: per-collective counts, bytes and bandwidth from the comm ledger."""
from __future__ import annotations


def ledger_delta(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``now - before`` per kind and field: the collectives issued between two snapshots."""
    delta = {}
    for kind, stats in now.items():
        old = before.get(kind, {})
        changed = {field: value - old.get(field, 0) for field, value in stats.items()}
        if changed.get("calls", 0):
            delta[kind] = changed
    return delta


def comm_table(delta: dict[str, dict[str, float]], kinds: list[str] | None = None) -> list[str]:
    """One line per collective kind: calls, wire bytes, seconds and bandwidth (wire bytes over
    the time zerolib waited for it; overlapped collectives therefore show a high bandwidth)."""
    lines = []
    for kind in sorted(delta):
        if kinds is not None and kind not in kinds:
            continue
        stats = delta[kind]
        seconds = stats.get("seconds", 0.0)
        rate = f"{stats['bytes'] / seconds / 1e9:.3f} GB/s" if seconds > 0 else "n/a"
        lines.append(f"{kind:<16} calls {int(stats['calls']):>6}  bytes {int(stats['bytes']):>14,}  "
                     f"time {seconds * 1000:9.1f} ms  bandwidth {rate}")
    return lines
