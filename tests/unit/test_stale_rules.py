"""Per-name stale rules: matching, the window they give, and their config errors."""

from __future__ import annotations

import pytest

from resolver import wire
from resolver.config import StaleConfig, StaleRule, parse_config
from resolver.errors import ConfigError
from resolver.policy.stale_rules import StaleRules, matches

ELB = StaleRule(match="*.elb.amazonaws.com", max_age=300.0, answer_ttl=10)
CDN = StaleRule(match="*.cdn.example", enabled=False)
EXACT = StaleRule(match="api.cdn.example", max_age=60.0)


def q(name: str) -> bytes:
    return wire.name_to_wire(name) + b"\x00\x01\x00\x01"


@pytest.mark.parametrize("pattern, name, expect", [
    ("*.elb.amazonaws.com", "x.elb.amazonaws.com", True),
    ("*.elb.amazonaws.com", "a.b.elb.amazonaws.com", True),
    ("*.elb.amazonaws.com", "elb.amazonaws.com", False),      # strictly below
    ("*.elb.amazonaws.com", "xelb.amazonaws.com", False),     # label boundary
    ("www.example", "www.example", True),
    ("www.example", "a.www.example", False),
])
def test_matches(pattern, name, expect):
    assert matches(pattern, name) is expect


def test_first_match_wins_and_case_is_folded():
    rules = StaleRules(StaleConfig(rules=(EXACT, CDN, ELB)))
    assert rules.find(q("API.CDN.example")) is EXACT
    assert rules.find(q("img.cdn.example")) is CDN
    assert rules.find(q("lb-1.us-east-1.ELB.amazonaws.com")) is ELB
    assert rules.find(q("www.example")) is None
    assert not StaleRules(StaleConfig()) and StaleRules(StaleConfig(rules=(CDN,)))


@pytest.mark.parametrize("rule, stale, expect", [
    (None, StaleConfig(), 86400.0),
    (ELB, StaleConfig(), 300.0),
    (CDN, StaleConfig(), 0.0),
    (StaleRule(match="x", answer_ttl=5), StaleConfig(), 86400.0),  # max_age omitted: the global one
    (StaleRule(match="x", max_age=0.0), StaleConfig(), 0.0),
    (ELB, StaleConfig(enabled=False), 0.0),
])
def test_window(rule, stale, expect):
    assert StaleRules(stale).window(rule, 86400.0 if stale.enabled else 0.0) == expect




def test_config_parses_rules(resolv):
    c = parse_config({"stale": {"rules": [
        {"match": "*.ELB.amazonaws.com.", "max_age": "5m", "answer_ttl": 10},
        {"match": "*.cdn.example", "enabled": False},
    ]}}, resolv_conf=resolv)
    assert c.stale.rules == (StaleRule("*.elb.amazonaws.com", True, 300.0, 10), StaleRule("*.cdn.example", False))


@pytest.mark.parametrize("rules, key, problem", [
    ("*.x", "stale.rules", "a list"),
    ([{"max_age": 5}], "stale.rules[0].match", "required"),
    (["*.x"], "stale.rules[0]", "a mapping"),
    ([{"match": "*.x", "maxage": 5}], "stale.rules[0].maxage", "unknown key"),
    ([{"match": "a", "max_age": -1}], "stale.rules[0].max_age", "non-negative"),
    ([{"match": "a"}, {"match": "b", "max_age": "2d"}], "stale.rules[1].max_age", "must not exceed stale.max_age"),
    ([{"match": "a", "answer_ttl": 1.5}], "stale.rules[0].answer_ttl", "whole number"),
    ([{"match": "a", "enabled": "no"}], "stale.rules[0].enabled", "true or false"),
    ([{"match": "**.x"}], "stale.rules[0].match", "domain name"),
    ([{"match": "a.*.x"}], "stale.rules[0].match", "domain name"),
    ([{"match": 7}], "stale.rules[0].match", "non-empty string"),
    ([None], "stale.rules[0].match", "required"),
])
def test_config_errors_name_the_rule(rules, key, problem, resolv):
    with pytest.raises(ConfigError) as info:
        parse_config({"stale": {"rules": rules}}, resolv_conf=resolv)
    assert info.value.key == key and problem in info.value.problem
