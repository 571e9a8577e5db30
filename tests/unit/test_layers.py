"""The package map's arrows point one way, and the sans-IO core stays sans-IO.

``resolver/`` is grouped by layer (README "Design"): each subpackage may import
only the layers below it, the core layers import no I/O, and two libraries each
have one home (prometheus_client in ``ops``, yaml in ``config``).  The rules are
stated per package here, so a new module is covered the moment it is created.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "resolver"

# Shared foundations at the top of the package: typed errors, the injectable
# clock, the cached running loop, and plain counters (no prometheus_client).
FOUNDATION = {"errors", "clock", "eventloop", "stats"}

# Package (or top-level module) → what it may import inside ``resolver``.  Order
# is the layering, lowest first; nothing may import a layer listed after it.
ALLOWED = {
    "errors": set(),
    "clock": set(),
    "eventloop": set(),
    "stats": set(),
    "wire": {"errors"},
    "config": {"wire", "errors"},
    "cache": {"wire", "clock", "errors", "stats", "config"},
    "policy": {"wire", "cache", "config", "errors"},
    "upstream": {"wire", "config", "errors", "clock", "eventloop", "stats", "policy"},
    "local": {"wire", "config", "cache", "errors"},
    "serve": {"wire", "config", "cache", "policy", "upstream", "local", "errors", "clock", "eventloop", "stats"},
    "ops": {"wire", "config", "cache", "policy", "upstream", "local", "serve", "errors", "clock", "eventloop",
            "stats"},
    "app": {"wire", "config", "cache", "policy", "upstream", "local", "serve", "ops", "errors", "clock",
            "eventloop", "stats"},
    "cli": {"app", "config", "ops", "errors"},
    "__main__": {"cli"},
    "__init__": set(),
}

# The sans-IO core: values in, values out (house rule 1).  The cache's I/O tier
# modules (``cache/persist.py``: when to load and save, on the event loop;
# ``cache/host.py``: the LMDB host tier and its writer thread; ``cache/fleet.py``: the
# Redis fleet tier's client and writer task) are the documented exception: the store,
# the layout, the snapshot format, the fleet's record codec and its breaker stay pure.
SANS_IO_PACKAGES = {"wire", "config", "policy"}
SANS_IO_MODULES = {"cache/store.py", "cache/snapshot.py", "cache/fleet_record.py", "cache/breaker.py",
                   "cache/fleet_stats.py", "local/answers.py", "serve/acl.py",
                   "serve/limits.py", "serve/ratelimit.py", "errors.py", "stats.py"}
FORBIDDEN_IN_CORE = {"asyncio", "socket", "time", "uvloop", "selectors", "threading"}

# One home for each of these libraries.
ONLY_IN = {"prometheus_client": {"ops"}, "yaml": {"config"}, "lmdb": {"cache"}, "h2": {"upstream"},
           "redis": {"cache"}}
# ... and within its package, one module: the I/O tier that needs it.  redis (with its
# import cost) stays out of everything a process loads when the fleet tier is off.
ONLY_MODULE = {"lmdb": "cache/host.py", "redis": "cache/fleet.py"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(layers inside ``resolver`` imported, top-level external modules imported) by a file.

    Relative imports are resolved against the file's own package, so ``from ..cache
    import store`` in ``serve/`` counts as importing ``cache`` and ``from . import x``
    in a subpackage counts as its own layer.
    """
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1])  # e.g. ["serve"] for serve/pipeline.py, [] at the top
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    internal.add(target[0])
                else:  # from . import x at the top level: x is a top-level module or package
                    internal.update(alias.name for alias in node.names)
            elif node.module:
                if node.module.split(".")[0] == "resolver":
                    parts = node.module.split(".")
                    internal.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    own = layer_of(path)
    return internal - {own}, external


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_known_layer():
    unknown = {str(p.relative_to(PACKAGE)) for p in modules() if layer_of(p) not in ALLOWED}
    assert not unknown, f"add these to a package of the map (README 'Design', ALLOWED here): {sorted(unknown)}"


def test_imports_follow_the_package_map():
    for path in modules():
        internal, _ = imports_of(path)
        extra = internal - ALLOWED[layer_of(path)]
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}, outside the package map"


def test_sans_io_core_imports_no_io():
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        if layer_of(path) in SANS_IO_PACKAGES or rel in SANS_IO_MODULES:
            _, external = imports_of(path)
            bad = external & FORBIDDEN_IN_CORE
            assert not bad, f"{rel} imports {sorted(bad)}: the core must stay sans-IO"


def test_libraries_have_one_home():
    for path in modules():
        _, external = imports_of(path)
        for library, homes in ONLY_IN.items():
            if library in external:
                assert layer_of(path) in homes, f"{path.relative_to(PACKAGE)} imports {library}; only {homes} may"


def test_io_libraries_have_one_module():
    for path in modules():
        _, external = imports_of(path)
        rel = str(path.relative_to(PACKAGE))
        for library, home in ONLY_MODULE.items():
            if library in external:
                assert rel == home, f"{rel} imports {library}; only {home} may"


def test_the_fleet_tier_is_where_the_rule_looks():
    """The redis rule is not vacuous: its one home does import redis, and the pure half does not."""
    assert "redis" in imports_of(PACKAGE / "cache" / "fleet.py")[1]
    assert not imports_of(PACKAGE / "cache" / "fleet_record.py")[1] & ({"redis"} | FORBIDDEN_IN_CORE)


def test_the_rules_can_fail():
    """The checker sees a violation when there is one (a guard against a vacuous pass)."""
    serve_pipeline = PACKAGE / "serve" / "pipeline.py"
    internal, _ = imports_of(serve_pipeline)
    assert {"cache", "wire", "policy"} <= internal
    assert "ops" not in ALLOWED["serve"] and "serve" not in ALLOWED["upstream"]


def test_the_native_hit_loop_has_one_door():
    """Only serve/batch.py imports the C extension (serve/_hitloop.c): everything else reaches the
    native loop through it, so the Python fallback, the selection and the env override stay in one place."""
    importers = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "_hitloop" for alias in node.names):
                importers.add(str(path.relative_to(PACKAGE)))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
                if any(n.endswith("_hitloop") or "._hitloop" in n for n in names):
                    importers.add(str(path.relative_to(PACKAGE)))
    assert importers == {"serve/batch.py"}
    assert (PACKAGE / "serve" / "_hitloop.c").exists()
