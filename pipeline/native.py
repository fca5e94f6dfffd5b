"""The capture's hot path compiled to C with mypyc, when a C compiler is at hand.

``make setup`` runs ``python -m pipeline.native build``: it compiles the pgoutput decoder,
the value converters and the envelope writer (modules already strictly typed) into extension
modules next to their sources, which Python then imports in their place. Without a compiler
(or with ``CDC_NATIVE=0``, or after ``python -m pipeline.native clean``) the same modules run
as plain Python: the behaviour is the same, only slower.

A compiled module would shadow later edits of its source (or of a module whose types it
relies on), so a build records the hashes of those sources, of the Python and of mypyc.
:func:`use_sources_if_stale`, run when ``pipeline.sources.postgres`` is imported, makes the
sources load instead as soon as anything differs or a compiled file is missing: a stale or
partial build is never run, and nothing is deleted behind another process's back.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
#: The package whose modules are compiled, and the modules (the capture's per-row work).
PACKAGE = ROOT / "sources" / "postgres"
MODULES = ("pgoutput", "values", "envelope", "decimals")
#: Modules the compiled ones take types from (paths under ``pipeline/``): a change of one
#: can change what the compiled code checks at run time, so it makes the build stale too.
DEPENDS = ("config.py", "events.py", "positions.py", "errors.py",
           "sources/postgres/columns.py", "sources/postgres/types.py",
           "sources/postgres/unconverted.py")
#: The shared library of the compiled group, kept inside the package.
GROUP = "pipeline.sources.postgres._compiled"
STAMP = PACKAGE / "_compiled.json"
_PREFIX = "pipeline.sources.postgres."


def _stamp() -> dict[str, object]:
    files = [PACKAGE / f"{name}.py" for name in MODULES] + [ROOT / d for d in DEPENDS]
    sources = {}
    for path in files:
        with contextlib.suppress(OSError):
            sources[path.name if path.parent == PACKAGE else str(path.relative_to(ROOT))] = (
                hashlib.sha256(path.read_bytes()).hexdigest())
    try:
        from mypy.version import __version__ as mypyc_version
    except ImportError:
        mypyc_version = "?"
    return {"python": sys.version.split()[0], "mypyc": mypyc_version, "sources": sources}


def _expected() -> list[str]:
    """The stems of the extension modules a complete build leaves in the package."""
    return [*MODULES, GROUP.rsplit(".", 1)[1] + "__mypyc"]


def _built() -> list[Path]:
    """The extension modules (of any build) in the package."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    stems = set(_expected())
    return [p for p in PACKAGE.iterdir()
            if p.name.endswith(suffixes) and p.name.split(".", 1)[0] in stems]


def current() -> bool:
    """Whether a complete build for this Python exists, made from the sources as they are."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    if not all((PACKAGE / f"{stem}{suffix}").exists() for stem in _expected()):
        return False
    try:
        return bool(json.loads(STAMP.read_text()) == _stamp())
    except (OSError, ValueError):
        return False


def compiled() -> bool:
    """Whether the capture's hot path runs compiled in this process."""
    from pipeline.sources.postgres import pgoutput
    return not str(getattr(pgoutput, "__file__", "")).endswith(".py")


class _Sources:
    """Finds the compiled modules' sources first (a stale build stays on disk, unused)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name.startswith(_PREFIX) and name[len(_PREFIX):] in MODULES:
            return importlib.util.spec_from_file_location(
                name, PACKAGE / f"{name[len(_PREFIX):]}.py")
        return None


def use_sources_if_stale() -> None:
    """Load the sources instead of a build that is stale, partial or for another Python.
    Cheap: a few file hashes, and only when compiled modules are there."""
    if not _built() or current():
        return
    if not any(isinstance(f, _Sources) for f in sys.meta_path):
        sys.meta_path.insert(0, _Sources())
    log.warning("the compiled capture modules do not match their sources (edited since the "
                "build, or another Python): running the sources; `make setup` compiles them "
                "again")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time installs into the package."""
    with open(PACKAGE / ".compiled.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def clean() -> None:
    """Remove the compiled modules and their stamp."""
    with _locked():
        _remove()


def _remove() -> None:
    for path in [*_built(), STAMP]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def build(force: bool = False, quiet: bool = False) -> bool:
    """Compile the modules in place; False (and plain Python) when that is not possible."""
    say = (lambda _: None) if quiet else print
    if os.environ.get("CDC_NATIVE", "1") == "0":
        say("CDC_NATIVE=0: not compiling; the capture runs as plain Python")
        clean()
        return False
    if not force and current():
        say("compiled capture modules are up to date")
        return True
    problem = _cannot_build()
    if problem:
        print(f"not compiling the capture's hot path ({problem}); it runs as plain Python, "
              "the same behaviour at lower speed")
        clean()
        return False
    print("compiling the capture's hot path with mypyc (under a minute; once per change)...",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="cdc-mypyc-") as work:
        out = Path(work) / "lib"
        script = Path(work) / "setup.py"
        files = [str(PACKAGE / f"{name}.py") for name in MODULES]
        script.write_text(
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='cdc-native', ext_modules=mypycify({files!r}, opt_level='3', "
            f"group_name={GROUP!r}, target_dir={str(Path(work) / 'c')!r}))\n")
        stamp = _stamp()  # the sources as compiled, not as they may be by the end
        # the project's mypy settings (strict) apply to the compiled modules as to lint
        done = subprocess.run(
            [sys.executable, str(script), "build_ext", "--build-lib", str(out),
             "--build-temp", str(Path(work) / "tmp")],
            cwd=ROOT.parent, capture_output=True, text=True)
        if done.returncode != 0:
            clean()
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            print(f"compiling the capture's hot path failed; it runs as plain Python:\n{tail}")
            return False
        made = sorted((out / "pipeline" / "sources" / "postgres").glob("*"))
        with _locked():  # stamp last: until then a reader sees a partial build, and skips it
            _remove()
            for path in made:
                shutil.copy2(path, PACKAGE / path.name)
            STAMP.write_text(json.dumps(stamp, indent=1) + "\n")
    print(f"compiled {', '.join(MODULES)} (pipeline/sources/postgres) with mypyc")
    return True


def _cannot_build() -> str | None:
    if importlib.util.find_spec("mypyc") is None:
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
        description="Compile the capture's hot path with mypyc, show whether it is, or remove "
                    "the compiled modules. Set CDC_NATIVE=0 to keep plain Python.")
    parser.add_argument("action", choices=("build", "clean", "status"))
    parser.add_argument("--force", action="store_true", help="compile even when up to date")
    parser.add_argument("--quiet", action="store_true", help="say nothing when up to date")
    args = parser.parse_args(argv)
    if args.action == "clean":
        clean()
        print("removed the compiled capture modules")
    elif args.action == "status":
        print("compiled, up to date" if current() else
              "plain Python" + (" (a stale build is on disk)" if _built() else ""))
    else:
        build(args.force, args.quiet)  # plain Python is a working install: never fail setup
    return 0


if __name__ == "__main__":
    sys.exit(main())
