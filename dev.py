#!/usr/bin/env python3
"""Bootstrap and run Tribune from a fresh clone.

    python3 dev.py demo      # a node with a demo roster and session
    python3 dev.py test      # the whole test suite
    python3 dev.py tribune … # any CLI command inside the project's environment

It creates `.venv` (and installs the project with its dev extras) the first time,
and again whenever `pyproject.toml` changes; the browser pages' npm packages are
installed the same way from `pages/package-lock.json`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".dev-stamp"
PAGES = ROOT / "pages"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Tribune needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    wanted = _digest(ROOT / "pyproject.toml")
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    _run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(wanted)


def ensure_pages() -> None:
    """`npm ci` when the lockfile changes, then the vendor bundle the pages import
    (`npm run build`) when it is missing or its source changed."""
    lock = PAGES / "package-lock.json"
    if not lock.exists():
        return
    npm = shutil.which("npm")
    stamp = PAGES / "node_modules" / ".dev-stamp"
    wanted = _digest(lock)
    if not (stamp.exists() and stamp.read_text() == wanted):
        if npm is None:
            sys.exit("Tribune's browser pages need Node.js and npm on PATH.")
        _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PAGES)
        stamp.write_text(wanted)
    bundle = PAGES / "static" / "vendor" / "vendor.js"
    built = PAGES / "node_modules" / ".build-stamp"
    wanted = wanted + _digest(*sorted((PAGES / "src").glob("*.js")), PAGES / "package.json")
    if not (bundle.exists() and built.exists() and built.read_text() == wanted):
        if npm is None:
            sys.exit("Tribune's browser pages need Node.js and npm on PATH.")
        _run([npm, "run", "--silent", "build"], cwd=PAGES)
        built.write_text(wanted)


def loopback_namespace() -> list[str]:
    """The test suite runs in a network namespace of its own holding only `lo`, so no test
    (WebRTC's ICE above all) can send a packet past loopback. Needs root and unshare."""
    unshare = shutil.which("unshare")
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if os.geteuid() != 0 or unshare is None or ip is None:
        print("not root or no unshare/ip: the WebRTC tests will refuse to run here", file=sys.stderr)
        return []
    return [unshare, "--net", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    ensure_venv()
    ensure_pages()
    command, rest = argv[0], argv[1:]
    if command == "test":
        cmd = [*loopback_namespace(), str(BIN / "python"), "-m", "pytest", *rest]
    elif command == "demo":
        cmd = [str(BIN / "tribune"), "demo", *rest]
    elif command == "tribune":
        cmd = [str(BIN / "tribune"), *rest]
    else:
        print(f"unknown command {command!r}; use demo, test or tribune", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
