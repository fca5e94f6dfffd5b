"""The capture's hot path compiled to C with mypyc, when a C compiler is at hand.

``make setup`` runs ``python -m pipeline.native build``: it compiles the pgoutput decoder,
the value converters and the envelope writer (modules already strictly typed) into extension
modules next to their sources, which Python then imports in their place. Without a compiler
(or with ``python -m pipeline.native clean``) the same modules run as plain Python: the
behaviour is the same, only slower.

A compiled module would shadow later edits of its source, so the build records each
source's hash, and :func:`drop_stale` (run when ``pipeline.sources.postgres`` is imported)
removes the compiled modules as soon as any source differs from what was compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: The package whose modules are compiled, and the modules (the capture's per-row work).
PACKAGE = Path(__file__).resolve().parent / "sources" / "postgres"
MODULES = ("pgoutput", "values", "envelope", "decimals")
#: The shared library of the compiled group, kept inside the package.
GROUP = "pipeline.sources.postgres._compiled"
STAMP = PACKAGE / "_compiled.json"


def _sources() -> dict[str, str]:
    return {name: hashlib.sha256((PACKAGE / f"{name}.py").read_bytes()).hexdigest()
            for name in MODULES}


def _built() -> list[Path]:
    """The extension modules a build left in the package."""
    suffixes = (f"{name}." for name in (*MODULES, "_compiled__mypyc"))
    prefixes = tuple(suffixes)
    return [p for p in PACKAGE.iterdir()
            if p.name.startswith(prefixes) and p.name.endswith((".so", ".pyd"))]


def _stamp() -> dict[str, object]:
    return {"python": sys.version.split()[0], "sources": _sources()}


def compiled() -> bool:
    """Whether the capture's hot path runs compiled in this process."""
    from pipeline.sources.postgres import pgoutput
    return not pgoutput.__file__.endswith(".py") if pgoutput.__file__ else False


def current() -> bool:
    """Whether compiled modules exist and were built from the sources as they are now."""
    if not _built():
        return False
    try:
        return bool(json.loads(STAMP.read_text()) == _stamp())
    except (OSError, ValueError):
        return False


def clean() -> None:
    for path in _built():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(FileNotFoundError):
        STAMP.unlink()


def drop_stale() -> None:
    """Remove compiled modules built from other sources (an edit since the build, or another
    Python), so the edited sources are what runs. Cheap: four file hashes."""
    if not _built() or current():
        return
    log.warning("the compiled capture modules are older than their sources: removed them, "
                "running the sources; `make setup` compiles them again")
    with contextlib.suppress(OSError):
        clean()


def build(force: bool = False) -> bool:
    """Compile the modules in place; False (and plain Python) when that is not possible."""
    if not force and current():
        print("compiled capture modules are up to date")
        return True
    if os.environ.get("CDC_NATIVE", "1") == "0":
        print("CDC_NATIVE=0: not compiling; the capture runs as plain Python")
        clean()
        return False
    problem = _cannot_build()
    if problem:
        print(f"not compiling the capture's hot path ({problem}); it runs as plain Python, "
              "the same behaviour at lower speed")
        clean()
        return False
    clean()
    root = PACKAGE.parents[2]
    with tempfile.TemporaryDirectory(prefix="cdc-mypyc-") as work:
        script = Path(work) / "setup.py"
        files = [str(PACKAGE / f"{name}.py") for name in MODULES]
        script.write_text(
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='cdc-native', ext_modules=mypycify({files!r}, opt_level='3', "
            f"group_name={GROUP!r}, target_dir={str(Path(work) / 'c')!r}))\n")
        # the project's mypy settings (strict) apply to the compiled modules as to lint
        done = subprocess.run(
            [sys.executable, str(script), "build_ext", "--inplace",
             "--build-temp", str(Path(work) / "tmp"), "--build-lib", str(Path(work) / "lib")],
            cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        clean()
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        print(f"compiling the capture's hot path failed; it runs as plain Python:\n{tail}")
        return False
    STAMP.write_text(json.dumps(_stamp(), indent=1) + "\n")
    print(f"compiled {', '.join(MODULES)} (pipeline/sources/postgres) with mypyc")
    return True


def _cannot_build() -> str | None:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed: pip install -e '.[dev]'"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").exists():
        return "the Python headers (Python.h) are missing"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.native",
        description="Compile the capture's hot path with mypyc (or remove the compiled "
                    "modules). Set CDC_NATIVE=0 to keep plain Python.")
    parser.add_argument("action", choices=("build", "clean", "status"))
    parser.add_argument("--force", action="store_true", help="compile even when up to date")
    args = parser.parse_args(argv)
    if args.action == "clean":
        clean()
        print("removed the compiled capture modules")
        return 0
    if args.action == "status":
        print("compiled, up to date" if current() else "plain Python")
        return 0
    build(args.force)
    return 0  # plain Python is a working install: never fail setup over it


if __name__ == "__main__":
    sys.exit(main())
