"""Coverage-guided fuzzing of the query path with atheris, for a bounded time.

The harness (query_path_harness.py) runs in a subprocess because libFuzzer ends
the process when it stops.  It is seeded with a few valid queries and replies so
the mutations start deep in the code.  A fixed seed and run count (``FUZZ_SEED``,
``FUZZ_RUNS``) make it reproducible; ``FUZZ_SECONDS`` caps the time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dns.message
import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; "
                    "it ships wheels for Linux x86_64 only)")

HARNESS = Path(__file__).with_name("query_path_harness.py")
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))  # an upper bound; the run is sized by RUNS
# A fixed seed and a fixed number of runs make the suite's fuzzing reproducible: CI
# replays the same inputs every time (set FUZZ_SEED/FUZZ_RUNS to explore further).
RUNS = int(os.environ.get("FUZZ_RUNS", "100000"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))


def _seeds() -> list[bytes]:
    queries = [dns.message.make_query("www.test", "A", use_edns=False),
               dns.message.make_query("WwW.TeSt", "A", use_edns=0, want_dnssec=True),
               dns.message.make_query("alias.test", "AAAA", use_edns=0)]
    reply = dns.message.make_response(queries[0])
    reply.answer.append(dns.rrset.from_text("www.test.", 300, "IN", "CNAME", "x.test."))
    reply.answer.append(dns.rrset.from_text("x.test.", 300, "IN", "A", "192.0.2.1"))
    reply.authority.append(dns.rrset.from_text("test.", 300, "IN", "SOA", "ns.test. a.test. 1 2 3 4 60"))
    body = reply.to_wire()
    q_end = 12 + len(b"\x03www\x04test\x00") + 4
    upstream = body[:12] + body[q_end:]  # the harness writes its own question back in
    return [b"\x00" + q.to_wire() for q in queries] + [b"\x01" + upstream, b"\x02" + upstream]


def test_query_path_survives_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(_seeds()):
        (corpus / f"seed{i}").write_bytes(seed)
    proc = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={SECONDS}", f"-runs={RUNS}", f"-seed={SEED}",
         "-rss_limit_mb=2048",
         "-max_len=1024", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path)
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0, f"fuzzer found a crash:\n{tail}"
    assert "Done" in proc.stderr and " runs in " in proc.stderr, tail
    runs = int(proc.stderr.rsplit("Done ", 1)[1].split(" runs", 1)[0])
    assert runs > 1000, f"only {runs} runs: the harness is not exercising anything\n{tail}"
