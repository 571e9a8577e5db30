"""The benchmark's own tools keep working: they are not run by CI, so these check them.

bench/ is not part of the pass/fail of speed (that lives in the benchmark's numbers,
never in timed tests); these tests assert only that the tools run and report
everything they measure.  ``bench-quick.json`` is a real ``bench/run.py --quick``
result (2026-11-26, 20:34 UTC).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import run as bench_run  # noqa: E402


def test_report_has_every_test_and_every_ratio():
    results = json.loads((Path(__file__).parent / "bench-quick.json").read_text())
    text = bench_run.report(results)
    for label in ("a. cache hits", "b. latency", "c. cache misses", "d. serve-stale", "Workers on 2 CPUs",
                  "Workers on 2 CPUs, cache misses", "f. Memory", "g. Start-up"):
        assert label in text, label
    for ratio in ("**resolver/unbound**", "**resolver/dnsmasq**", "**resolver/uvloop-ceiling**",
                  "**stale/fresh (same instance)**"):
        assert ratio in text, ratio
    assert "2 / 1: resolver" in text and "unbound" in text.split("2 / 1: resolver")[1]


def test_misspath_plain_drives_real_misses_through_an_app():
    """bench/misspath.py without valgrind: real sockets, a real App; it checks the miss count itself."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "misspath.py"), "--plain", "300"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("300 misses in "), proc.stdout


def test_ceiling_server_answers_with_the_query_id(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import servers

    server = servers.start_ceiling(tmp_path, None)
    try:
        assert servers.query_once(server.port, "h0.bench.test", timeout=2.0) == (0, 1)
    finally:
        server.stop()
