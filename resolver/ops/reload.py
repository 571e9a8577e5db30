"""SIGHUP live reload: which config changes can apply to a running process, and the bookkeeping.

A reload is all or nothing.  The new file is parsed and validated first; a bad
file, or one that changes a key only a restart can apply (the sockets we hold,
the number of worker processes), is refused with one log line and the running
configuration stays.  Everything else — upstreams, upstream timing, cache limits,
stale settings, server limits, snapshot path and interval, log level — applies to
the live objects (see ``App.reload``); the cache is kept.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..config import Config
from ..errors import ConfigError
from ..serve import batch

log = logging.getLogger("resolver.reload")

# Keys whose change needs a restart: sockets are bound once, workers are forked once.
RESTART_ONLY = ("listen", "metrics", "admin", "workers", "hosts_file", "fleet")


class ReloadStats:
    """Plain counters for the metrics collector."""

    __slots__ = ("successes", "failures", "last_success_wall", "last_error")

    def __init__(self):
        self.last_error = ""  # the last refusal's one-line message (resolver ctl reload shows it)
        self.successes = 0
        self.failures = 0
        self.last_success_wall = 0.0


def check_runnable(config: Config) -> None:
    """Raise ConfigError for a valid config this host cannot run (checked at start and by --check-config)."""
    batch.choose(config.server.udp_accelerator)  # "on" where the native hit loop is not built


def check_reloadable(old: Config, new: Config) -> None:
    """Raise ConfigError naming the first key that needs a restart to change."""
    for key in RESTART_ONLY:
        if getattr(old, key) != getattr(new, key):
            raise ConfigError(key, "cannot change on reload (restart the process to apply it)")
    # The UDP sockets' reader (native batches or uvloop's callback) is chosen when they are bound.
    if old.server.udp_accelerator != new.server.udp_accelerator:
        raise ConfigError("server.udp_accelerator", "cannot change on reload (restart the process to apply it)")


def reload(load: Callable[[], Config], apply: Callable[[Config], None], stats: ReloadStats,
           wall: Callable[[], float]) -> bool:
    """Load a config with ``load``, hand it to ``apply``; count and log the outcome.

    ``apply`` must validate (``check_reloadable``) before it changes anything.
    Returns True on success.  Never raises for a bad config: the old one keeps running.
    """
    try:
        config = load()
        apply(config)
    except ConfigError as exc:
        stats.failures += 1
        stats.last_error = str(exc)
        log.error("reload refused, keeping the running configuration: %s", exc)
        return False
    stats.successes += 1
    stats.last_success_wall = wall()
    log.info("configuration reloaded")
    return True
