"""``resolver ctl``: the operator's client for the admin API (as unbound-control or rndc).

    resolver ctl status                      version, uptime, upstreams, outage cover, cache
    resolver ctl lookup NAME [TYPE]          what the cache holds for a question, with deadlines
    resolver ctl flush NAME [TYPE] | --zone ZONE | --all
    resolver ctl pin NAME [TYPE] / unpin NAME [TYPE] / pins
    resolver ctl reload                      re-read the configuration file (as SIGHUP)

It talks HTTP to the admin listener: by default the Unix socket the server would
choose for this user (``admin.default_socket_path``: the same environment gives
the same path, so ``docker exec <c> resolver ctl status`` and ``sudo resolver ctl
status`` next to the systemd unit find it); ``--config`` reads ``admin.socket``
(or ``admin.listen``) from the server's file; ``--socket`` or ``--url`` name it.
Human output by default, ``--json`` prints the server's JSON for scripts.

Exit codes (for scripts):
  0  done
  1  the server refused or failed the request (bad name, pin limit, reload refused, …)
  2  usage error, or an unreadable --config / --token-file
  3  the admin listener could not be reached (not running, wrong socket, permission)
  4  lookup: nothing cached for that question
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
import urllib.parse

from ..config import ADMIN_SOCKET_AUTO, load_config, read_token
from ..errors import ConfigError
from .admin import default_socket_path

OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND = 0, 1, 2, 3, 4


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Unreachable(Exception):
    pass


class Client:
    def __init__(self, socket_path: str | None = None, url: str | None = None, token: str | None = None,
                 timeout: float = 10.0):
        self.socket_path = socket_path
        self.url = urllib.parse.urlsplit(url) if url else None
        self.token = token
        self.timeout = timeout

    @property
    def where(self) -> str:
        return f"unix:{self.socket_path}" if self.url is None else self.url.geturl()

    def request(self, method: str, path: str, **params: str | None) -> tuple[int, bytes]:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        target = path + ("?" + query if query else "")
        if self.url is None:
            conn = _UnixConnection(self.socket_path, self.timeout)
        else:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port or 80, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request(method, target, body=b"" if method == "POST" else None, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"cannot reach the admin listener at {self.where}: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        finally:
            conn.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="resolver ctl", description="Control a running resolver through its admin API.",
                                epilog="exit codes: 0 done, 1 refused or failed, 2 usage, 3 unreachable, "
                                       "4 lookup found nothing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", "-s", metavar="PATH", help="admin Unix socket (default: where the server "
                       "puts it for this user; see admin.socket)")
    where.add_argument("--url", metavar="URL", help="admin TCP listener, e.g. http://127.0.0.1:8953")
    where.add_argument("--config", "-c", metavar="FILE", help="the server's configuration: use its admin section")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for a TCP admin listener")
    p.add_argument("--worker", type=int, default=0, metavar="N", help="with workers > 1: which worker (default 0)")
    p.add_argument("--json", action="store_true", help="print the server's JSON (for scripts)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default 10)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="version, uptime, upstream health and latency, outage cover, cache counts")
    lookup = sub.add_parser("lookup", help="what the cache holds for NAME [TYPE], with its deadlines")
    lookup.add_argument("name")
    lookup.add_argument("type", nargs="?", default="A")
    flush = sub.add_parser("flush", help="drop cached answers: NAME [TYPE], --zone ZONE or --all")
    flush.add_argument("name", nargs="?")
    flush.add_argument("type", nargs="?")
    flush.add_argument("--zone", metavar="ZONE", help="every name at or below ZONE")
    flush.add_argument("--all", action="store_true", help="everything")
    for name, what in (("pin", "hold NAME's last-known-good answer against empty answers"),
                       ("unpin", "release a pin")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("name")
        cmd.add_argument("type", nargs="?", default="A")
    sub.add_parser("pins", help="list the pins")
    sub.add_parser("reload", help="re-read the configuration file (as SIGHUP)")
    args = p.parse_args(argv)
    if args.command == "flush" and sum(bool(x) for x in (args.name, args.zone, args.all)) != 1:
        p.error("flush: give exactly one of NAME, --zone ZONE, --all")
    if args.command == "flush" and args.type and not args.name:
        p.error("flush: TYPE only together with NAME")
    return args


def client_for(args: argparse.Namespace) -> Client:
    """Where the admin listener is; ConfigError for an unusable --config or --token-file."""
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="ascii") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("--token-file", f"cannot read {args.token_file!r}: {getattr(e, 'strerror', e)}")
    suffix = f".{args.worker}" if args.worker else ""
    if args.url:
        return Client(url=args.url, token=token, timeout=args.timeout)
    if args.socket:
        return Client(socket_path=args.socket + suffix, token=token, timeout=args.timeout)
    if args.config:
        admin = load_config(args.config).admin
        if admin.token_file and token is None and not admin.socket:
            token = read_token(admin.token_file).decode()  # the server's own token, if we may read it
        if admin.socket:
            path = default_socket_path() if admin.socket == ADMIN_SOCKET_AUTO else admin.socket
            return Client(socket_path=path + suffix, token=token, timeout=args.timeout)
        if admin.listen:
            host, _, port = admin.listen.rpartition(":")
            return Client(url=f"http://{host}:{int(port) + args.worker}", token=token, timeout=args.timeout)
        raise ConfigError("admin", f"{args.config} configures no admin listener (admin.socket and admin.listen empty)")
    return Client(socket_path=default_socket_path() + suffix, token=token, timeout=args.timeout)


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = parse_args(sys.argv[2:] if argv is None else argv)
    try:
        client = client_for(args)
    except ConfigError as e:
        print(f"resolver ctl: {e}", file=err)
        return USAGE
    try:
        return run(client, args, out, err)
    except Unreachable as e:
        print(f"resolver ctl: {e}", file=err)
        return UNREACHABLE


def run(client: Client, args: argparse.Namespace, out, err) -> int:
    cmd = args.command
    if cmd == "status":
        status, body = client.request("GET", "/status")
        return _show(status, body, args, out, err, format_status)
    if cmd == "lookup":
        status, body = client.request("GET", "/cache", name=args.name, type=args.type)
        if status == 404:
            if args.json:
                out.write(body.decode())
            else:
                print(f"{args.name} {args.type.upper()}: nothing cached", file=out)
            return NOT_FOUND
        return _show(status, body, args, out, err, format_lookup)
    if cmd == "flush":
        params = {"zone": args.zone} if args.zone else {} if args.all else {"name": args.name, "type": args.type}
        status, body = client.request("POST", "/cache/flush", **params)
        return _show(status, body, args, out, err, lambda doc: f"flushed {doc['flushed']} entries")
    if cmd in ("pin", "unpin"):
        status, body = client.request("POST", f"/lkg/{cmd}", name=args.name, type=args.type)
        return _show_text(status, body, args, out, err, {"name": args.name, "type": args.type.upper()})
    if cmd == "pins":
        status, body = client.request("GET", "/lkg/pins")
        if status != 200:
            return _refused(status, body, err)
        lines = body.decode().splitlines()
        if args.json:
            print(json.dumps({"pins": [dict(zip(("name", "type"), line.split(" "))) for line in lines]}), file=out)
        else:
            out.write("".join(line + "\n" for line in lines) or "no pins\n")
        return OK
    if cmd == "reload":
        status, body = client.request("POST", "/reload")
        return _show(status, body, args, out, err, lambda doc: "configuration reloaded")
    raise AssertionError(cmd)  # argparse allows no other command


def _refused(status: int, body: bytes, err) -> int:
    text = body.decode(errors="replace").strip()
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    print(f"resolver ctl: refused ({status}): {text}", file=err)
    return FAILED


def _show(status: int, body: bytes, args, out, err, human) -> int:
    if status != 200:
        if args.json:
            out.write(body.decode(errors="replace"))
        return _refused(status, body, err)
    doc = json.loads(body)
    print(json.dumps(doc, indent=1) if args.json else human(doc), file=out)
    return OK


def _show_text(status: int, body: bytes, args, out, err, fields: dict) -> int:
    if status != 200:
        return _refused(status, body, err)
    message = body.decode().strip()
    print(json.dumps({**fields, "result": message}) if args.json else message, file=out)
    return OK


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"


def format_status(doc: dict) -> str:
    lines = [f"resolver {doc['version']}, up {_duration(doc['uptime_seconds'])}", "upstreams:"]
    for u in doc["upstreams"]:
        latency = f"latency {u['latency_ms']:.1f} ms" if u["latency_ms"] is not None else "latency n/a"
        state = "up" if u["up"] else f"DOWN ({u['consecutive_failures']} consecutive failures)"
        lines.append(f"  {u['upstream']:<28} {state:<6} {latency:<18} requests {u['requests']}")
    o = doc["outage"]
    if o["covering"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(o["since"]))
        lines.append(f"outage: COVERING since {since}, {o['stale_answers']} stale answers so far; upstreams down: "
                     f"{', '.join(o['upstreams_down']) or 'none marked down'}")
    elif o["upstreams_down"]:
        lines.append(f"outage: no stale answers served; upstreams down: {', '.join(o['upstreams_down'])}")
    else:
        lines.append("outage: none")
    c = doc["cache"]
    lines.append(f"cache: {c['entries']} entries ({c['fresh']} fresh, {c['stale']} stale) of {c['max_entries']}, "
                 f"{c['evictions']} evictions")
    lines.append(f"pins: {doc['pins']['held']} of {doc['pins']['max']}")
    return "\n".join(lines)


def format_lookup(doc: dict) -> str:
    lines = [f"{doc['name']} {doc['type']}:"]
    for e in doc["entries"]:
        flags = f" [{e['flags']}]" if e["flags"] else ""
        if e["state"] == "fresh":
            when = f"fresh, TTL {e['ttl_left']:g}s left"
        else:
            when = f"stale for {e['expired_for']:g}s, servable {e['stale_servable_for']:g}s more"
        recheck = f", recheck in {e['recheck_left']:g}s" if e["recheck_left"] else ""
        lines.append(f"  {e['kind']} {e['rcode']}{flags}: {when}{recheck}, cached {e['cached_for']:g}s ago")
        lines.extend(f"    {record}" for record in e["records"])
    return "\n".join(lines)
