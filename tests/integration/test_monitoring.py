"""promtool on a real scrape and on the shipped alert rules; the dashboard and the
rules name only metrics a running forwarder exports.

promtool comes from Debian's ``prometheus`` package (``make test`` installs it);
the promtool tests are skipped, with the reason, only where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.client import ask

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
requires_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus; `make test` does it)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=MONITORING)


def busy_forwarder(fake_upstream, start_forwarder):
    """A forwarder with every kind of answer behind it, so every family has samples."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    fwd = start_forwarder([fake_upstream.address], stale={"client_timeout": 0.2},
                          upstream={"attempt_timeout": 0.3, "total_timeout": 0.3})
    ask(fwd.port, "www.test")
    ask(fwd.port, "www.test")
    ask(fwd.port, "nosuch.test")
    fake_upstream.mode("servfail")
    fwd.advance(61)
    ask(fwd.port, "www.test")
    ask(fwd.port, "www.test")
    ask(fwd.port, "never.test")
    return fwd


@requires_promtool
def test_promtool_check_metrics_on_a_real_scrape(fake_upstream, start_forwarder):
    fwd = busy_forwarder(fake_upstream, start_forwarder)
    status, text = fwd.http("/metrics")
    assert status == 200
    result = promtool("check", "metrics", stdin=text)
    # promtool prints lint problems (naming, units, help) and exits non-zero on them.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@requires_promtool
def test_promtool_check_metrics_can_fail():
    """The check above is real: a badly named counter is reported."""
    result = promtool("check", "metrics", stdin="# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n")
    assert result.returncode != 0 and "_total" in result.stdout + result.stderr


@requires_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


@requires_promtool
def test_promtool_test_rules():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_unit_tests():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    tested = [t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]]
    for alert in alerts:
        fires = [t for case in tests["tests"] for t in case["alert_rule_test"]
                 if t["alertname"] == alert and t["exp_alerts"]]
        assert fires and tested.count(alert) >= 2, alert  # one firing case, one quiet case
    assert alerts == {"ResolverServingStale", "ResolverUpstreamDown", "ResolverServfailRatioHigh",
                      "ResolverCacheNearCapacity"}


def _names(expr: str) -> set[str]:
    return set(re.findall(r"\bresolver_[a-z_]+\b", expr))


def test_dashboard_and_rules_name_only_exported_metrics(fake_upstream, start_forwarder):
    fwd = busy_forwarder(fake_upstream, start_forwarder)
    _, text = fwd.http("/metrics")
    exported = set(re.findall(r"^(resolver_[a-z_]+)", text, re.M))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set().union(*map(_names, exprs))
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("queries/s", "hit ratio", "stale answers", "upstream latency", "upstream health", "servfail"):
        assert topic in titles, topic
