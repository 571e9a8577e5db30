"""Packaging: the sources build a wheel whose metadata and entry point are right, and the
installed command reports the version from that metadata.

The wheel is built from a copy of exactly what the Dockerfile's build stage copies
(pyproject.toml, README.md, resolver/), with the version changed to one that appears nowhere
else: the installed ``resolver --version`` must print it, so the version can only come from
the package metadata.  Built without build isolation (the test extra brings setuptools and
wheel), so the test needs no network.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TEST_VERSION = "9.8.7.post42"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "README.md", src)
    shutil.copy(REPO / "setup.py", src)  # the optional native hit loop (the Dockerfile copies it too)
    text = (REPO / "pyproject.toml").read_text()
    text, n = re.subn(r'(?m)^version = "[^"]+"', f'version = "{TEST_VERSION}"', text)
    assert n == 1
    (src / "pyproject.toml").write_text(text)
    shutil.copytree(REPO / "resolver", src / "resolver", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    out_dir = tmp_path_factory.mktemp("wheels")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-cache-dir", "-q", "-w", str(out_dir), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = out_dir.glob("resolver-*.whl")
    return built


def _compiler() -> bool:
    return sys.platform.startswith("linux") and shutil.which("cc") is not None


def test_wheel_metadata_and_entry_point(wheel):
    # With the native hit loop built (Linux, a compiler) the wheel is CPython- and platform-specific.
    tag = r"cp\d+-cp\d+-linux_\w+" if _compiler() else r"py3-none-any"
    assert re.fullmatch(rf"resolver-{re.escape(TEST_VERSION)}-{tag}\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = f"resolver-{TEST_VERSION}.dist-info"
        meta = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert meta["Name"] == "resolver" and meta["Version"] == TEST_VERSION
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    required = {re.split(r"[<>=; ]", r, maxsplit=1)[0].lower() for r in meta.get_all("Requires-Dist")
                if "extra ==" not in r}
    assert required == {re.split(r"[<>=]", d, maxsplit=1)[0].lower() for d in PROJECT["dependencies"]}
    assert re.search(r"(?m)^\[console_scripts\]\s*\nresolver = resolver\.cli:main$", entry_points)
    package = REPO / "resolver"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    native = {n.split("/", 1)[1] for n in names if n.startswith("resolver/") and n.endswith(".so")}
    assert {n.split("/", 1)[1] for n in names if n.startswith("resolver/") and n.endswith(".py")} == modules
    if _compiler():
        assert len(native) == 1 and next(iter(native)).startswith("serve/_hitloop.")
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_installed_command_reports_the_metadata_version(wheel, tmp_path):
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                          "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    script = target / "bin" / "resolver"
    assert script.exists(), sorted(p.name for p in (target / "bin").iterdir())
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, dependencies from here
    version = subprocess.run([sys.executable, str(script), "--version"], capture_output=True,
                             text=True, env=env, timeout=30, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"resolver {TEST_VERSION}"
    check = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                           env=env, timeout=30, cwd=tmp_path)
    assert "--check-config" in check.stdout


def test_changelog_has_the_current_version():
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"(?m)^## \[?{re.escape(PROJECT['version'])}\]?", changelog), \
        "CHANGELOG.md needs a section for the version in pyproject.toml"
