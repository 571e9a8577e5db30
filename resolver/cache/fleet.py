"""The fleet cache tier (L3): a Redis or Valkey shared by every node.  The I/O half.

Why: in a regional DNS outage the nodes that suffer most are those that never
asked for a name before it began (a pod scheduled during the incident, a node just
rebooted): their own caches are empty, so serve-stale has nothing to serve.  The
fleet as a whole knew every name.  This tier lets any node read what any node
learned — and, since entries stay in Redis until their stale limit, serve it
stale (RFC 8767) when the upstreams are gone.

Never in the way (what Unbound's cachedb and the CoreDNS redis plugins get wrong):

* **Off the hit path.**  A cache hit never reaches this module.  ``read`` runs only
  when the in-process cache and the host tier both miss, and the caching stage
  races it against the upstream query it has already started
  (``serve/caching.py``), so it never delays an upstream answer; it waits at most
  ``read_budget`` (redis-py's asyncio client, hiredis parser, cut off by an
  ``asyncio.timeout``).  Reads asked for in one turn of the event loop share one
  MGET: a flood of misses costs a round trip per batch, not per miss.  The Redis
  budgets run on the loop's timers, like the listeners' socket housekeeping (see
  ``clock.py``): they bound real I/O against a real server, which a test's
  ``advance()`` of the injected clock must not cut short.  The breaker's reset and
  every cache deadline are on the injected clock.
* **Written behind.**  ``enqueue`` (from ``Cache.put``) is a deque append; a full
  queue drops the write and counts it.  One writer task sends batches in one
  pipelined round trip (``SET key value PX ms``), bounded by ``write_timeout``.
* **A breaker** (``breaker.py``) stops asking a Redis that times out or errors
  ``breaker_failures`` times in a row; one request probes it after
  ``breaker_reset``.  Open, a miss goes straight upstream and writes are dropped.
* **No scans, no connection at start.**  The client connects on first use, so the
  forwarder starts and serves with Redis down, and nothing is loaded: a miss reads
  one key.

The store is one server, a Redis Cluster or a master found through Sentinel
(``fleet.mode``; ``make_client``).  On a cluster a batch's keys span slots: reads
are redis-py's ``mget_nonatomic`` (an MGET per slot, one pipeline per master) and
writes a pipeline of ``SET … PX`` per key, since the write script cannot span slots;
the budgets, the breaker and the bounded queue are the same in every mode.

Values are authenticated (``fleet_record.py``: HMAC-SHA256 with the shared secret
over the key, the answer and its wall-clock deadlines): a value that fails — forged,
or moved from another key — is counted (``rejected``), never served.
Redis keeps each value until its stale limit (``PX``), and its own eviction
policy bounds memory (README "Fleet": ``maxmemory-policy volatile-ttl``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from .. import wire
from ..clock import Clock
from ..config import FleetConfig
from . import fleet_record
from .breaker import HALF_OPEN, Breaker
from .fleet_stats import FleetStats
from .store import Entry

log = logging.getLogger("resolver.fleet")

WRITE_BATCH = 512  # entries per pipelined round trip at most
# Every SET of a write batch in one command: KEYS are the keys, ARGV value and PX (ms) in turn.
# (EVALSHA; redis-py loads the script again if Redis was restarted and lost it.)
SET_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
end
return #KEYS
"""
# What a failed call raises: the cluster client's own errors (no node reachable, a slot not
# covered) are not RedisErrors.
FAILURES = (RedisError, RedisClusterException, OSError)
PROBE_WAIT = 0.01  # seconds the writer waits for a read probing a half-open breaker
LOG_EVERY = 60.0  # failures and refused values are logged at most this often
def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def described(config: FleetConfig) -> str:
    """Where the tier's store is, for logs: no password."""
    if config.mode == "sentinel":
        sentinels = ", ".join(f"{host}:{port}" for host, port in config.sentinels)
        return f"master {config.sentinel_service!r} of Sentinels {sentinels}"
    return f"{config.mode} {redacted(config.url)}" if config.mode != "standalone" else redacted(config.url)


def make_client(config: FleetConfig):
    """The redis-py asyncio client for ``config`` (``fleet.mode``).  Connects on first use, not here.

    Standalone: a blocking pool of ``max_connections``: a burst of misses waits (within
    its read budget) for a connection instead of failing — a read takes a fraction of
    a millisecond, so a few connections serve tens of thousands of reads a second.
    One retry inside redis-py, no back-off: a pooled connection that Redis closed (a
    restart, an idle timeout) fails at once and is replaced within the same budget;
    more could only spend the budget again, and the breaker decides when to ask
    again.  Socket timeouts are a backstop behind the ``asyncio.timeout`` each call
    runs under.  Cluster and Sentinel get the same timeouts and retry (their clients
    have no blocking pool: a node's ``max_connections`` exhausted fails the call,
    which the caller counts as an error).
    """
    extra = {}
    if config.url.startswith("rediss://") and config.tls_ca_file:
        extra["ssl_ca_certs"] = config.tls_ca_file
    options = dict(decode_responses=False, socket_connect_timeout=config.write_timeout,
                   socket_timeout=config.write_timeout, retry=Retry(NoBackoff(), 1), health_check_interval=0,
                   **extra)
    if config.mode == "cluster":
        return make_cluster_client(config, options)
    if config.mode == "sentinel":
        return make_sentinel_client(config, options)
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url, max_connections=config.max_connections, timeout=config.write_timeout,
        retry_on_timeout=False, **options)
    return aioredis.Redis.from_pool(pool)


def make_cluster_client(config: FleetConfig, options: dict) -> RedisCluster:
    """A Redis Cluster client seeded by ``config.url``: it learns the slot map (CLUSTER SLOTS)
    from that node on first use and follows MOVED/ASK itself.

    Its retry (one, no back-off) also bounds its own re-discovery after a node fails, and
    full coverage is not required: with a master gone, the keys of its slots miss (they
    go upstream) while the others are still read and written.
    """
    return RedisCluster.from_url(config.url, max_connections=config.max_connections,
                                 require_full_coverage=False, **options)


def make_sentinel_client(config: FleetConfig, options: dict) -> aioredis.Redis:
    """A client of the master the Sentinels call ``config.sentinel_service``: redis-py asks them
    for its address on connect and again after a failover (a connection to a demoted
    master is dropped).  ``config.url``, if set, gives only the master's password,
    username, database and TLS (rediss://)."""
    if config.url:
        parts = urlsplit(config.url)
        db = parts.path.strip("/")
        options.update(username=unquote(parts.username) if parts.username else None,
                       password=unquote(parts.password) if parts.password else None,
                       db=int(db) if db.isdigit() else 0, ssl=parts.scheme == "rediss")
    sentinel_options = {k: options[k] for k in ("socket_connect_timeout", "socket_timeout", "retry")}
    sentinel = Sentinel(list(config.sentinels), sentinel_kwargs=sentinel_options, **options)
    return sentinel.master_for(config.sentinel_service, max_connections=config.max_connections)


class FleetTier:
    """``read`` on a miss, ``enqueue`` from ``Cache.put``; one writer task."""

    def __init__(self, config: FleetConfig, secret: bytes, clock: Clock, client=None):
        self.config = config
        self.secret = secret
        self.clock = clock
        self.prefix = config.key_prefix.encode()
        self.stats = FleetStats()
        self.breaker = Breaker(config.breaker_failures, config.breaker_reset)
        self.client = client  # made in start() unless given (tests)
        self._queue: collections.deque = collections.deque()  # (key, entry or None = delete)
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, from start()
        self._batch: list | None = None  # reads asked for in this turn of the loop: (key, future)
        self._reading: set[asyncio.Task] = set()  # MGET batches in flight
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._cluster = False  # a Redis Cluster: per-slot reads and writes (start())
        self._stopping = False
        self._last_logged = -LOG_EVERY

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Make the client and start the writer task; no connection is made here."""
        if self.client is None:
            self.client = make_client(self.config)
        self._cluster = self.config.mode == "cluster"
        if self._cluster:
            # A batch's keys hash to many slots: MGET per slot, sent as one pipeline per node
            # (redis-py's mget_nonatomic); the multi-key script cannot span slots at all.
            self._mget = self.client.mget_nonatomic
        else:
            self._mget = self.client.mget
            self._set_many = self.client.register_script(SET_MANY)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._writer = self._loop.create_task(self._write_loop())
        log.info("fleet cache tier %s (prefix %r, read budget %g ms)", described(self.config),
                 self.config.key_prefix, self.config.read_budget * 1000)

    async def stop(self) -> None:
        """Send what is queued, stop the writer, close the client: within about 2 × ``write_timeout``.

        The writer is told to stop and woken, not cancelled: redis-py can swallow a
        cancellation that lands inside a command, and a writer that never saw it would
        wait for work for ever (found by bench/misspath.py's shutdown).  It is cancelled
        only if it has not finished in time.
        """
        self._stopping = True
        if self._reading:  # read batches in flight end within the read budget
            await asyncio.wait(list(self._reading), timeout=2 * self.config.read_budget)
        writer, self._writer = self._writer, None
        if writer is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(writer), 2 * self.config.write_timeout)
            except TimeoutError:
                writer.cancel()
                self.stats.dropped += len(self._queue)
                self._queue.clear()
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.aclose(), self.config.write_timeout)
            except (Exception, asyncio.TimeoutError):
                pass

    # ------------------------------------------------------------------ reads
    def request(self, key: bytes) -> asyncio.Future | None:
        """Start reading cache key ``key``: a future that resolves, within ``read_budget``, to the
        entry with deadlines on this node's clock or None; None at once if the breaker is open.

        Reads asked for in the same turn of the event loop go out together, as one MGET
        (one round trip, one task): under a flood of misses redis-py's per-command cost
        is paid per batch, not per miss.  The future never raises.
        """
        if not self.breaker.allow(self.clock.monotonic()):
            self.stats.skipped += 1
            return None
        loop = self._loop
        future = loop.create_future()
        batch = self._batch
        if batch is None:
            batch = self._batch = []
            loop.call_soon(self._send_batch)
        batch.append((key, future))
        return future

    async def read(self, key: bytes) -> Entry | None:
        """``request`` awaited: the entry or None, within ``read_budget``; never raises."""
        future = self.request(key)
        return None if future is None else await future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, None
        task = self._loop.create_task(self._read_batch(batch))
        self._reading.add(task)  # a reference until done (the loop keeps only a weak one)
        task.add_done_callback(self._reading.discard)

    async def _read_batch(self, batch: list) -> None:
        """One MGET for ``batch``, cut off at the budget; resolves every future in it, whatever happens."""
        stats = self.stats
        stats.reads += len(batch)
        started = time.perf_counter()
        values = None
        ok = False
        try:
            async with asyncio.timeout(self.config.read_budget):
                values = await self._mget([self.prefix + key for key, _ in batch])
            ok = True
        except TimeoutError:
            stats.timeouts += 1
        except FAILURES as e:
            stats.errors += 1
            self._log_throttled("fleet cache tier: read failed (misses go upstream): %s", e)
        finally:
            elapsed = time.perf_counter() - started
            observe = stats.read_latency.observe
            for _ in batch:
                observe(elapsed)
            if ok:
                self.breaker.succeeded()
            else:  # (also a cancelled batch: the probe must not stay out for ever)
                self.breaker.failed(self.clock.monotonic())
            if values is None or len(values) != len(batch):
                values = [None] * len(batch)
            for (key, future), value in zip(batch, values):
                if not future.done():
                    future.set_result(self._entry(key, value))

    def _entry(self, key: bytes, value: bytes | None) -> Entry | None:
        stats = self.stats
        if value is None:
            stats.misses += 1
            return None
        clock = self.clock
        try:
            entry = fleet_record.entry_from_value(self.secret, key, value, clock.monotonic(), clock.wall())
        except fleet_record.FleetRecordError as e:
            stats.rejected[e.reason] += 1
            stats.misses += 1
            self._log_throttled("fleet cache tier: value under %r refused (not served): %s", key, e)
            return None
        if entry is None:  # past its stale limit by our clock (Redis keeps it a little longer)
            stats.misses += 1
            return None
        stats.hits += 1
        return entry

    # ------------------------------------------------------------------ writes
    def enqueue(self, key: bytes, entry: Entry | None) -> None:
        """Queue ``entry`` (None: delete the key) for the writer: one append, never a wait.

        A full queue drops the write and counts it: the entry is still served here.
        """
        if entry is not None and entry.kind == wire.FAILURE:  # a brief SERVFAIL memory is ours alone
            return
        queue = self._queue
        if len(queue) >= self.config.write_queue or self._wake is None:
            self.stats.dropped += 1
            return
        queue.append((key, entry))
        self.stats.queued += 1
        if len(queue) == 1:
            self._wake.set()

    def forget(self, key: bytes) -> None:
        """Delete ``key`` in the fleet too (an operator's flush of one question)."""
        self.enqueue(key, None)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception:  # background task boundary: log with context, keep going
                self.stats.write_errors += 1
                log.exception("fleet cache tier: writer failed")
            if self._stopping:  # (after one last flush of what was queued)
                return

    async def _flush(self) -> None:
        """Send everything queued, a batch per round trip; drop it while the breaker is open."""
        queue = self._queue
        stats = self.stats
        breaker = self.breaker
        while queue:
            if not breaker.allow(self.clock.monotonic()):
                if breaker.state == HALF_OPEN:  # a read is probing: its outcome decides, soon
                    await asyncio.sleep(PROBE_WAIT)
                    continue
                stats.dropped += len(queue)
                queue.clear()
                return
            batch: dict[bytes, Entry | None] = {}
            for _ in range(min(len(queue), WRITE_BATCH)):
                key, entry = queue.popleft()
                batch[key] = entry  # the last value per key wins
            await self._write_batch(batch)

    async def _write_batch(self, batch: dict) -> None:
        """One round trip for ``batch``: the SETs as one script call (one command, one reply to
        parse: a pipeline of SETs cost ~20 µs of redis-py per entry), the deletes as one DEL."""
        stats = self.stats
        now = self.clock.monotonic()
        wall_offset = self.clock.wall() - now
        prefix = self.prefix
        keys, args, doomed = [], [], []
        for key, entry in batch.items():
            if entry is None:
                doomed.append(prefix + key)
                continue
            value = fleet_record.encode(self.secret, key, entry, wall_offset)
            expire = fleet_record.expire_ms(entry, now)
            if value is None or not expire:
                continue
            keys.append(prefix + key)
            args.append(value)
            args.append(expire)
        sent = len(keys) + len(doomed)
        if not sent:
            return
        pipe = self.client.pipeline(transaction=False)
        if self._cluster:
            # One command per key (a script or a DEL of many keys cannot span slots); the
            # cluster pipeline sends each node its commands in one round trip, nodes in parallel.
            for i, key in enumerate(keys):
                pipe.set(key, args[2 * i], px=args[2 * i + 1])
            for key in doomed:
                pipe.delete(key)
        else:
            if keys:
                await self._set_many(keys=keys, args=args, client=pipe)  # (queued on the pipeline)
            if doomed:
                pipe.delete(*doomed)
        try:
            async with asyncio.timeout(self.config.write_timeout):
                await pipe.execute()
        except TimeoutError:
            stats.timeouts += 1
            self._write_failed(sent, "timed out")
        except FAILURES as e:
            stats.errors += 1
            self._write_failed(sent, e)
        else:
            stats.writes += sent
            self.breaker.succeeded()

    def _write_failed(self, count: int, why) -> None:
        self.stats.write_errors += 1
        self.stats.dropped += count
        self.breaker.failed(self.clock.monotonic())
        self._log_throttled("fleet cache tier: %d entries not written (still served here): %s", count, why)

    def _log_throttled(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY:
            self._last_logged = now
            log.warning(message, *args)
