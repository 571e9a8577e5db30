"""Sums of the forwarder's answer counters across its two paths, as tests read them.

The package keeps the counts where each path bumps them (``Stats`` for the general
path, per-entry cells in ``Stats.tally`` for the hit path) and sums them only at
scrape time (ops/metrics.py); these are the same sums for assertions.
"""

from __future__ import annotations

from resolver.stats import Stats

__all__ = ["hits", "stale", "stale_total"]


def hits(stats: Stats) -> int:
    """All fresh cache answers: general path plus hit path."""
    return stats.cache_hits + stats.tally.fresh_hits()


def stale(stats: Stats, reason: str) -> int:
    """Stale answers for one reason, both paths (the hit path only answers "recheck")."""
    return stats.stale_answers.get(reason, 0) + (stats.tally.stale_hits() if reason == "recheck" else 0)


def stale_total(stats: Stats) -> int:
    """All stale answers, every reason, both paths."""
    return sum(stats.stale_answers.values()) + stats.tally.stale_hits()
