"""Cache snapshot benchmark: file size, longest event-loop stall while saving, load time.

    /work/main/.venv/bin/python bench/snapshot.py [entries]     (default 1,000,000)

Fills a cache with ``entries`` A answers (distinct keys), then on a uvloop loop
with a 1 ms ticker task measuring how late it wakes (the loop stall a client
would see):

* ``slices``  — the server's way (persist.Persister.save): references copied in one
  pass, records encoded on the loop in slices of persist.SLICE with a yield
  between them, the file write + fsync in a thread;
* ``thread``  — everything (encode + write) in a worker thread, the loop free but
  competing for the GIL.

Then loads the file into an empty cache (snapshot.load) and reports the time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop  # noqa: E402
from dnslib import QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord  # noqa: E402

from resolver import persist, snapshot, wire  # noqa: E402
from resolver.cache.store import Cache  # noqa: E402
from resolver.clock import SystemClock  # noqa: E402
from resolver.config import PersistConfig  # noqa: E402


def fill(n: int, clock) -> Cache:
    cache = Cache(n)
    now = clock.monotonic()
    for i in range(n):
        name = f"host{i}.example.com"
        q = wire.name_to_wire(name) + b"\x00\x01\x00\x01"
        rec = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1), q=DNSQuestion(name, QTYPE.A)) if i < 1 else None
        if rec is not None:
            rec.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=300))
            template = wire.parse_reply(bytes(rec.pack()), q, min_ttl=0, max_ttl=86400, max_negative_ttl=3600)
        p = wire.Prepared(template.kind, template.rcode, 300, template.hdr, template.hdr_opt,
                          q + template.body[len(q):] if False else bytes(template.body), template.ttl_offsets, False)
        cache.put(q, p, now, 86400)
    return cache


async def measure(save) -> tuple[float, float]:
    """(seconds the save took, longest loop stall in seconds)."""
    worst = 0.0
    done = False

    async def ticker():
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.05)
    worst = 0.0
    t0 = time.perf_counter()
    await save()
    took = time.perf_counter() - t0
    done = True
    await tick
    return took, worst


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    clock = SystemClock()
    t = time.perf_counter()
    cache = fill(n, clock)
    print(f"filled {n} entries in {time.perf_counter() - t:.1f}s")
    tmp = tempfile.mkdtemp(prefix="snapbench")
    path = os.path.join(tmp, "cache.snap")
    saver = persist.Persister(cache, clock, PersistConfig(path=path))

    async def thread_save():
        keys, values = list(cache.entries), list(cache.entries.values())

        def work():
            data = snapshot.encode(keys, values, clock.wall() - clock.monotonic(), clock.wall())
            snapshot.write_atomic(path, [data])
        await asyncio.to_thread(work)

    async def run():
        for name, fn in (("slices", saver.save), ("thread", thread_save), ("slices", saver.save)):
            took, stall = await measure(fn)
            print(f"save[{name}]: {took:.2f}s total, longest loop stall {stall * 1000:.1f} ms")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
    size = os.path.getsize(path)
    print(f"file size: {size / 1e6:.1f} MB ({size / n:.0f} bytes/entry)")
    fresh = Cache(n)
    t = time.perf_counter()
    loader = persist.Persister(fresh, clock, PersistConfig(path=path))
    result = loader.load()
    print(f"load: {result.restored} entries in {time.perf_counter() - t:.2f}s")
    os.unlink(path)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
