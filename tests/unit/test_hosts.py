"""hosts.py: /etc/hosts text into records; bad lines skipped with file:line; reload on change."""

from __future__ import annotations

import logging
import os

from resolver import wire
from resolver.config import HostsFileConfig
from resolver.local.hosts import HostsFile, parse_hosts
from resolver.wire.records import TYPES, Record

N = wire.name_to_wire

DEBIAN = """\
127.0.0.1	localhost
127.0.1.1	myhost.example.org	myhost

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""


def test_debian_default_hosts_file():
    records, warnings = parse_hosts(DEBIAN, "/etc/hosts", 60)
    assert warnings == []
    assert Record(N("localhost"), TYPES["A"], 60, bytes((127, 0, 0, 1))) in records
    assert Record(N("myhost"), TYPES["A"], 60, bytes((127, 0, 1, 1))) in records
    assert Record(N("ip6-loopback"), TYPES["AAAA"], 60, bytes(15) + b"\x01") in records
    # PTR: one per address, to the first name on its first line (the canonical name)
    ptrs = {r.name: r.rdata for r in records if r.rtype == TYPES["PTR"]}
    assert ptrs[N("1.0.0.127.in-addr.arpa")] == N("localhost")
    assert ptrs[N("1.1.0.127.in-addr.arpa")] == N("myhost.example.org")
    assert len(ptrs) == 5


def test_names_are_case_folded_and_duplicates_merged():
    records, _ = parse_hosts("192.0.2.1 NAS.lan nas.lan\n192.0.2.1 nas.lan\n192.0.2.2 nas.lan\n", "h", 5)
    a = [r for r in records if r.rtype == TYPES["A"]]
    assert [r.rdata for r in a] == [bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2))]


def test_bad_lines_are_skipped_with_file_and_line():
    text = "\n".join([
        "192.0.2.1 good.lan",          # 1
        "192.0.2.300 bad-address",      # 2
        "printer.lan 192.0.2.4",        # 3: columns swapped
        "192.0.2.5",                    # 4: no name
        "fe80::1%eth0 scoped",          # 5
        "192.0.2.6 bad..name",          # 6
        "192.0.2.7 under_score ok-too", # 7
        "\x00\xff garbage",             # 8
        "   # only a comment",          # 9
        "192.0.2.8 *.wild",             # 10
    ])
    records, warnings = parse_hosts(text, "/tmp/h", 60)
    assert [w.split(":")[1] for w in warnings] == ["2", "3", "4", "5", "6", "8", "10"]
    assert all(w.startswith("/tmp/h:") and w.endswith("line skipped") for w in warnings)
    assert "expected an IP address, got '192.0.2.300'" in warnings[0]
    names = {r.name for r in records if r.rtype == TYPES["A"]}
    assert names == {N("good.lan"), N("under_score"), N("ok-too")}


def test_an_address_gets_one_ptr_however_it_is_written():
    records, _ = parse_hosts("::1 a\n0::1 b\n0:0::1 c\n", "h", 5)
    assert [r.rdata for r in records if r.rtype == TYPES["PTR"]] == [N("a")]


def test_binary_garbage_never_raises():
    for blob in (os.urandom(2000).decode("latin-1"), "\n" * 1000, "::::: :::::\n" * 10):
        parse_hosts(blob, "x", 1)


def test_reload_only_when_the_file_changes(tmp_path, caplog):
    path = tmp_path / "hosts"
    path.write_text("192.0.2.1 a.lan\n")
    seen = []
    hosts = HostsFile(HostsFileConfig(enabled=True, path=str(path), ttl=30), seen.append)
    assert hosts.check() is True
    assert hosts.check() is False  # unchanged: no read
    assert [r.ttl for rs in seen[0].values() for r in sum(rs.values(), [])] == [30, 30]
    path.write_text("192.0.2.2 b.lan\nnonsense\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    with caplog.at_level(logging.WARNING, logger="resolver.hosts"):
        assert hosts.check() is True
    assert set(seen[1]) == {N("b.lan"), N("2.2.0.192.in-addr.arpa")}
    assert f"{path}:2:" in caplog.text and hosts.bad_lines == 1 and hosts.reloads == 2


def test_missing_file_is_a_warning_and_no_entries(tmp_path, caplog):
    seen = []
    hosts = HostsFile(HostsFileConfig(enabled=True, path=str(tmp_path / "nope")), seen.append)
    with caplog.at_level(logging.WARNING, logger="resolver.hosts"):
        assert hosts.check() is True
    assert seen == [{}] and hosts.errors == 1 and "cannot read" in caplog.text
    assert hosts.check() is False  # still missing: not re-read, not re-logged
    (tmp_path / "nope").write_text("192.0.2.1 back.lan\n")
    assert hosts.check() is True and N("back.lan") in seen[-1]


def test_warnings_are_bounded(tmp_path, caplog):
    path = tmp_path / "hosts"
    path.write_text("bad\n" * 500)
    hosts = HostsFile(HostsFileConfig(enabled=True, path=str(path)), lambda records: None)
    with caplog.at_level(logging.WARNING, logger="resolver.hosts"):
        hosts.check()
    assert len(caplog.records) <= 21 and hosts.bad_lines == 500
