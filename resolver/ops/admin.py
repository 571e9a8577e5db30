"""The HTTP listeners: public monitoring, and the privileged admin API.

Two listeners share one route table, and one gate decides for every route:

* the **metrics listener** (``metrics.listen``; on ``0.0.0.0`` in the container,
  sidecar and node-local configs so Prometheus and the kubelet reach it) serves
  only the routes marked ``public``: ``/metrics``, ``/healthz``, ``/readyz``.
  Every other route is refused there, whoever asks.
* the **admin listener** (``admin.socket``, a Unix socket of mode 0600, and
  optionally ``admin.listen``, a TCP address) serves every route.  On the Unix
  socket the file's permissions are the gate (only its owner and root can
  connect); on TCP a request must come from a loopback address, or carry
  ``Authorization: Bearer <admin.token_file's token>`` when a token is set.

Routes are privileged unless declared public, so a route added later cannot
forget the gate (``tests/unit/test_admin.py`` walks the table).

Why a small server of our own instead of prometheus_client's (threaded) or an
HTTP framework: the handlers must run on the DNS event loop, next to the live
cache and pipeline, and the accepted grammar is tiny (a request line and headers,
no bodies, one request per connection), parsed by h11 (sans-IO HTTP/1.1).  What made the old server dangerous was
not parsing but resources, and those are bounded here whatever parses the bytes:

* at most ``max_connections`` connections per listener; at the cap the listener
  stops *accepting* (the kernel's backlog holds the rest), so idle clients cannot
  use up the process's file descriptors, which DNS over TCP and the upstream
  sockets need;
* the request head must arrive within ``timeout`` (slowloris), the whole reply
  must be written within ``timeout`` (a client that never reads is cut off);
* replies are written in bounded chunks with a drain after each, so a client that
  does not read holds at most one chunk plus the transport's high-water mark, and
  large listings are produced chunk by chunk, yielding to the loop in between.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import inspect
import ipaddress
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Union

import h11

log = logging.getLogger("resolver.admin")

MAX_REQUEST = 8192  # request line + headers; we accept no bodies
MAX_HEADERS = 64
CHUNK = 16 * 1024  # bytes written per drain
_WRITE_HIGH_WATER = 64 * 1024
_BACKLOG = 64
_METHODS = frozenset({"GET", "HEAD", "POST"})
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 507: "Insufficient Storage"}
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

Body = Union[bytes, Iterable[bytes]]


@dataclass
class Request:
    """One parsed request.  ``peer`` is the client's IP, or ``"unix"``; ``who`` names the
    client for audit lines (address, or uid/pid from SO_PEERCRED on the Unix socket)."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    peer: str = "unix"
    who: str = "unix"

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass
class Reply:
    """``body`` is bytes, or an iterable of byte chunks written one drain at a time."""

    status: int
    ctype: str
    body: Body = b""


def text(status: int, message: str) -> Reply:
    return Reply(status, TEXT, (message if message.endswith("\n") else message + "\n").encode())


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    handler: Callable[[Request], Union[Reply, Awaitable[Reply]]]
    public: bool = False  # served on the metrics listener without the gate (monitoring only)


class AdminStats:
    """Plain counters for the metrics collector."""

    __slots__ = ("actions", "denied", "timed_out")

    def __init__(self):
        self.actions: dict[str, int] = {}  # pin, unpin, flush, reload -> count
        self.denied: dict[str, int] = {}  # listener -> requests refused by the gate
        self.timed_out: dict[str, int] = {}  # listener -> connections cut for a slow read or write


ACTIONS = ("pin", "unpin", "flush", "reload")
LISTENERS = ("metrics", "admin")


class Gate:
    """Decides whether a request may use a privileged route on one listener."""

    def __init__(self, privileged: bool, token: bytes | None = None):
        self.privileged = privileged  # False: the metrics listener, public routes only
        self.token = token

    def refuse(self, request: Request) -> Reply | None:
        if not self.privileged:
            return text(403, "this route is served on the admin listener only (admin.socket / admin.listen)")
        if request.peer == "unix":
            return None  # the socket file's mode (0600) already chose who can connect
        if self.token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
                return None
            return text(401, "admin: a valid 'Authorization: Bearer <token>' header is required")
        try:
            if ipaddress.ip_address(request.peer.split("%")[0]).is_loopback:
                return None
        except ValueError:
            pass
        return text(403, "admin: only loopback clients may use this route (admin.token_file enables remote use)")


class Router:
    """The route table shared by both listeners; ``dispatch`` applies the gate."""

    def __init__(self, stats: AdminStats | None = None):
        self.routes: dict[str, Route] = {}
        self.stats = stats or AdminStats()

    def add(self, route: Route) -> None:
        if route.path in self.routes:
            raise ValueError(f"route {route.path} registered twice")
        self.routes[route.path] = route

    async def dispatch(self, request: Request, gate: Gate, listener: str = "admin") -> Reply:
        route = self.routes.get(request.path)
        if route is None:
            return text(404, "not found")
        if not route.public:
            refusal = gate.refuse(request)
            if refusal is not None:
                self.stats.denied[listener] = self.stats.denied.get(listener, 0) + 1
                log.warning("admin: refused %s %s from %s (%s)", request.method, request.path, request.who,
                            refusal.status, extra={"event": "admin_denied", "peer": request.who,
                                                   "path": request.path, "listener": listener})
                return refusal
            if request.method == "POST" and "origin" in request.headers:
                # A browser page posting cross-site to a loopback port: no CLI sends Origin.
                return text(403, "cross-origin requests may not change state")
        if request.method not in route.methods:
            return text(405, f"method not allowed (use {' or '.join(route.methods)})")
        try:
            reply = route.handler(request)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception:  # the listener's boundary: a bug answers 500, the listener lives on
            log.exception("admin request %s %s failed", request.method, request.path)
            return text(500, "internal error (logged)")
        return reply

    def handle(self, method: str, target: str, headers: dict[str, str] | None = None, peer: str = "127.0.0.1",
               gate: Gate | None = None, listener: str = "admin") -> tuple[int, str, bytes]:
        """Route one request without sockets (tests): (status, content type, whole body)."""
        request = Request(method, target, {k.lower(): v for k, v in (headers or {}).items()}, peer, peer)
        loop = asyncio.new_event_loop()
        try:
            reply = loop.run_until_complete(self.dispatch(request, gate or Gate(True), listener))
        finally:
            loop.close()
        body = reply.body if isinstance(reply.body, bytes) else b"".join(reply.body)
        return reply.status, reply.ctype, body


class BadRequest(Exception):
    pass


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers) from a request head; BadRequest for anything off-grammar.

    h11 parses (RFC 9112: request line, field names as tokens, field values, framing
    headers); on top of it we accept less: three methods, an origin-form target,
    at most MAX_HEADERS fields and no body.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise BadRequest(f"malformed request ({e})") from None
    if not isinstance(event, h11.Request):
        raise BadRequest("incomplete request")
    method = event.method.decode("ascii")
    if method not in _METHODS:
        raise BadRequest("unsupported method")
    if event.http_version not in (b"1.0", b"1.1"):
        raise BadRequest("unsupported HTTP version")
    target = event.target.decode("ascii")  # h11 allows visible ASCII only
    if not target.startswith("/"):
        raise BadRequest("malformed request target")
    if len(event.headers) > MAX_HEADERS:
        raise BadRequest("too many headers")
    headers = {name.decode("ascii"): value.decode("latin-1") for name, value in event.headers}  # names lower-cased
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0"):
        raise BadRequest("request bodies are not accepted (parameters go in the query string)")
    return method, target, headers


def _peer_cred(sock: socket.socket) -> str:
    """``uid=… pid=…`` of a Unix socket peer (Linux SO_PEERCRED), for audit lines."""
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
        return f"unix uid={uid} pid={pid}"
    except (OSError, AttributeError):
        return "unix"


class HttpListener:
    """One listening socket (TCP or Unix) serving ``router`` behind ``gate``, with bounds."""

    def __init__(self, router: Router, gate: Gate, name: str, max_connections: int = 32, timeout: float = 5.0):
        self.router = router
        self.gate = gate
        self.name = name  # "metrics" or "admin": metric label and log text
        self.max_connections = max_connections
        self.timeout = timeout
        self.port = 0
        self.unix_path: str | None = None
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []
        self._clients: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._unix_inode: tuple[int, int] | None = None

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    async def start_tcp(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # reuse_port: during a zero-gap upgrade the successor binds this port while we still run.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listen(sock)

    async def start_unix(self, path: str) -> None:
        """Bind ``path`` with mode 0600, replacing a stale socket (never any other kind of file)."""
        prepare_socket_dir(os.path.dirname(path))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
            os.unlink(path)  # a predecessor's (stale, or handing over to us)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        st = os.lstat(path)
        self._unix_inode = (st.st_dev, st.st_ino)
        self.unix_path = path
        self._listen(sock)

    def _listen(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        self._sockets.append(sock)
        self._accepting.append(asyncio.get_running_loop().create_task(self._accept_loop(sock)))

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # At the cap, stop accepting: waiting clients stay in the kernel's backlog and
            # cost this process no file descriptor (bounded by the backlog length).
            await self._slots.acquire()
            try:
                conn, addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError as e:
                self._slots.release()
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s listener: cannot accept (%s); pausing", self.name, e.strerror)
                    await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._serve(conn, addr))
            self._clients.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._clients.discard(task)
        self._slots.release()

    async def _serve(self, conn: socket.socket, addr) -> None:
        unix = conn.family == socket.AF_UNIX
        peer = "unix" if unix else addr[0]
        who = _peer_cred(conn) if unix else f"{addr[0]}:{addr[1]}"
        writer = None
        try:
            if unix:
                reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST)
            else:
                reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_REQUEST)
            writer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
            try:
                async with asyncio.timeout(self.timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                self._count_timeout()
                return
            method = "GET"
            try:
                method, target, headers = parse_head(head)
                reply = await self.router.dispatch(Request(method, target, headers, peer, who), self.gate, self.name)
            except BadRequest as e:
                reply = text(400, f"bad request: {e}")
            try:
                async with asyncio.timeout(self.timeout):
                    await self._write(writer, reply, method == "HEAD")
            except TimeoutError:
                self._count_timeout()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass
        except Exception:  # the listener's boundary
            log.exception("%s request failed", self.name)
        finally:
            if writer is not None:
                writer.transport.abort()  # never wait for a client to take unsent bytes
            else:
                conn.close()

    def _count_timeout(self) -> None:
        self.router.stats.timed_out[self.name] = self.router.stats.timed_out.get(self.name, 0) + 1

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, head_only: bool) -> None:
        streamed = not isinstance(reply.body, bytes)
        length = "" if streamed else f"Content-Length: {len(reply.body)}\r\n"
        head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\nContent-Type: {reply.ctype}\r\n"
                f"{length}Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
        writer.write(head)
        if head_only:
            await writer.drain()
            return
        chunks = _chunks(reply.body) if not streamed else reply.body
        for chunk in chunks:
            for start in range(0, len(chunk), CHUNK):
                writer.write(chunk[start:start + CHUNK])
                await writer.drain()
            await asyncio.sleep(0)  # a long listing yields to the DNS listeners between chunks
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for task in list(self._clients):
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._accepting, self._sockets = [], []
        if self.unix_path and self._unix_inode:
            try:  # only our own socket: a successor may already have bound a new one there
                st = os.lstat(self.unix_path)
                if (st.st_dev, st.st_ino) == self._unix_inode:
                    os.unlink(self.unix_path)
            except OSError:
                pass


def audit(stats: AdminStats, request: Request, action: str, what: str) -> None:
    """One log line and one count per state change: who did what (README "Admin API")."""
    stats.actions[action] = stats.actions.get(action, 0) + 1
    log.warning("admin %s: %s (by %s)", action, what, request.who,
                extra={"event": "admin_action", "action": action, "target": what, "peer": request.who})


def _chunks(body: bytes) -> Iterable[bytes]:
    yield body


def prepare_socket_dir(directory: str) -> None:
    """Create the admin socket's directory (0700) if missing; refuse one others could write to.

    A socket in a directory writable by others could be replaced by theirs (ctl
    would then talk to an impostor), hence the owner and mode checks.
    """
    if not directory:
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create admin socket directory {directory}: {e.strerror}") from None
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"admin socket directory {directory} is not a directory")
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        raise OSError(errno.EPERM, f"admin socket directory {directory} is writable by everyone")
    if st.st_uid not in (0, os.geteuid()) and st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"admin socket directory {directory} is owned by uid {st.st_uid} "
                      "and writable by others than us")


def default_socket_path(env: dict | None = None, euid: int | None = None) -> str:
    """Where ``admin.socket: ""`` puts the admin socket, and where ``resolver ctl`` looks.

    The same answer for the server and for ctl run by the same user:
    ``$RESOLVER_ADMIN_SOCKET`` (the container image sets it to its state volume);
    systemd's ``$RUNTIME_DIRECTORY`` (RuntimeDirectory=resolver); ``/run/resolver``
    for root (what ``sudo resolver ctl`` finds for the systemd unit);
    ``$XDG_RUNTIME_DIR/resolver`` for a user session (``make run``); else a
    per-user directory under /tmp, created 0700.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("RESOLVER_ADMIN_SOCKET"):
        return env["RESOLVER_ADMIN_SOCKET"]
    if env.get("RUNTIME_DIRECTORY"):
        return os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], "admin.sock")
    if euid == 0:
        return "/run/resolver/admin.sock"
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "resolver", "admin.sock")
    return f"/tmp/resolver-{euid}/admin.sock"
