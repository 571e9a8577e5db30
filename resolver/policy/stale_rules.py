"""Per-name stale rules: a short or no stale window for names whose data rotates.

Load-balancer and CDN names (``*.elb.amazonaws.com``) change addresses every few
minutes, so a day-old answer is worse than none; internal names keep the long
global window.  ``stale.rules`` lists patterns, the first match wins.

The rule is resolved once, when an entry is stored (as Unbound computes all of an
entry's deadlines at insert): it sets the entry's ``stale_until`` and, if the rule
has its own ``answer_ttl``, pre-builds the entry's stale body with that TTL.  The
hit path therefore does no matching at all and is unchanged.  Pure: no I/O.
"""

from __future__ import annotations

from .. import wire
from ..config import StaleConfig, StaleRule


def compile_pattern(pattern: str) -> tuple[bytes, bool]:
    """(zone or name in wire form, strictly below it?) for a rule's ``match`` text."""
    if pattern.startswith("*."):
        return wire.zone_to_wire(pattern[2:]), True
    return wire.zone_to_wire(pattern), False


def _matches(compiled: tuple[bytes, bool], name: bytes) -> bool:
    """``*.zone`` matches names strictly below zone; anything else matches that name only."""
    zone, below = compiled
    if below:
        return name != zone and wire.in_zone(name, zone)
    return name == zone


def matches(pattern: str, name: str) -> bool:
    """`_matches` for a pattern and a name in presentation form (lower case)."""
    return _matches(compile_pattern(pattern), wire.name_to_wire(name))


class StaleRules:
    def __init__(self, stale: StaleConfig):
        self.rules: tuple[StaleRule, ...] = stale.rules
        self.stale = stale
        # The config holds patterns as text; questions are wire names: convert once.
        self._compiled = tuple((compile_pattern(rule.match), rule) for rule in stale.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def find(self, question: bytes) -> StaleRule | None:
        """The first rule matching the question's name, or None."""
        name = question[:-4].lower()
        for compiled, rule in self._compiled:
            if _matches(compiled, name):
                return rule
        return None

    def window(self, rule: StaleRule | None, default: float) -> float:
        """How long past expiry an entry under ``rule`` may be served stale."""
        if rule is None:
            return default
        if not rule.enabled or not self.stale.enabled:
            return 0.0
        return rule.max_age if rule.max_age >= 0 else default
