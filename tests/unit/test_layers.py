"""The module map's arrows point one way, and the sans-IO core stays sans-IO.

wire, cache, stale and config take values and return values: they must not import
asyncio, socket or time (house rule 1), and no module may import one above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "resolver"

SANS_IO = {"wire", "cache", "stale", "config", "errors", "stats", "records", "local", "acl", "limits", "antispoof",
           "ratelimit", "last_known_good", "stale_rules", "upstream_policy"}
FORBIDDEN_IN_CORE = {"asyncio", "socket", "time", "uvloop", "selectors", "threading"}

# Who may import whom inside the package (the architecture's module map).
ALLOWED = {
    "errors": set(),
    "clock": set(),
    "eventloop": set(),
    "stats": set(),
    "wire": {"errors"},
    "config": {"errors", "records"},
    "records": {"wire"},
    "local": {"wire", "records", "config", "cache"},
    "hosts": {"records", "config"},
    "routing": {"config", "pool"},
    "cache": {"wire", "stats"},
    "stale": {"cache", "config"},
    "upstream": {"antispoof", "wire", "errors", "config", "eventloop"},
    "antispoof": {"errors"},
    "pool": {"upstream", "wire", "errors", "config", "stats", "upstream_policy", "eventloop"},
    "upstream_policy": set(),
    "dot": {"antispoof", "wire", "config", "errors"},
    "pipeline": {"wire", "cache", "stale", "pool", "clock", "config", "errors", "stats", "querylog", "local",
                 "last_known_good", "stale_rules", "eventloop", "limits"},
    "last_known_good": {"wire", "cache", "config", "errors"},
    "stale_rules": {"wire", "config"},
    "lkg_admin": {"wire", "admin"},
    "health": {"wire", "config", "pool", "upstream"},
    "querylog": {"stats"},
    "outagelog": {"pool", "stats"},
    "server": {"wire", "pipeline", "config", "stats", "handover", "acl", "limits", "ratelimit", "eventloop"},
    "ratelimit": {"wire", "config", "errors"},
    "acl": {"wire", "config", "errors"},
    "limits": {"config"},
    "handover": set(),
    "reload": {"config", "errors"},
    "supervisor": set(),
    "snapshot": {"wire", "cache"},
    "persist": {"snapshot", "cache", "clock", "config"},
    "metrics": {"cache", "pool", "stats", "local", "admin"},
    "admin": set(),
    "adminapi": {"admin", "cacheadmin", "metrics", "lkg_admin"},
    "ctl": {"admin", "config", "errors"},
    "cacheadmin": {"wire", "cache", "stats"},
    "app": {"eventloop", "outagelog", "metrics", "admin", "cache", "clock", "config", "pipeline", "pool", "server", "stats",
            "upstream", "routing", "local", "hosts", "wire", "persist", "reload", "acl", "limits", "ratelimit",
            "errors", "health", "adminapi", "dot", "handover"},
    "cli": {"app", "config", "errors", "reload", "supervisor", "ctl", "admin"},
    "__main__": {"cli"},
    "__init__": set(),
}


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(package-internal modules, top-level external modules) imported by a file."""
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .x import y
                if node.module:
                    internal.add(node.module.split(".")[0])
                else:
                    internal.update(alias.name for alias in node.names)
            elif node.module:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return internal, external


def test_every_module_is_in_the_map():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(ALLOWED), "update ALLOWED (and ARCHITECTURE notes) when adding a module"


def test_imports_follow_the_module_map():
    for path in PACKAGE.glob("*.py"):
        internal, _ = imports_of(path)
        extra = internal - ALLOWED[path.stem]
        assert not extra, f"{path.stem} imports {sorted(extra)}, outside the module map"


def test_sans_io_core_imports_no_io():
    for name in SANS_IO:
        _, external = imports_of(PACKAGE / f"{name}.py")
        bad = external & FORBIDDEN_IN_CORE
        assert not bad, f"{name} imports {sorted(bad)}: the core must stay sans-IO"
