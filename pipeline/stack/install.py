"""Idempotent, cached installation helpers: Debian packages, Maven Central artifacts,
zip unpacking, the system user that runs servers refusing root.

Everything here is safe to call on every ``up``: each step returns at once when its
result is already present (binary on disk, marker file written after a complete download).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.stack.errors import StackError
from pipeline.stack.process import run

MARKER = ".complete"
_apt_lock = threading.Lock()
_user_lock = threading.Lock()
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def cache_dir() -> Path:
    """Root of the download cache: ``$CDC_CACHE_DIR`` or ``~/.cache/cdc-pipeline``."""
    env = os.environ.get("CDC_CACHE_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "cdc-pipeline"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def announce(message: str) -> None:
    """Say what a (first-run) install step is doing, on stderr (stdout carries the exports)."""
    print(f"[stack {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def apt_install(packages: Sequence[str], present: Path) -> None:
    """Install Debian ``packages`` unless ``present`` (a file they provide) exists.

    Runs ``apt-get install -y --no-install-recommends``; only if that fails runs
    ``apt-get update`` and tries again. Serialised within the process.
    """
    if present.exists():
        return
    with _apt_lock:
        if present.exists():
            return
        started = time.monotonic()
        announce(f"installing {' '.join(packages)} with apt (first run only)...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            *packages,
        ]
        try:
            run(cmd, env=env, timeout=900)
        except StackError:
            run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=300"], env=env, timeout=900)
            run(cmd, env=env, timeout=900)
        if not present.exists():
            raise StackError(f"apt installed {packages} but {present} is still missing")
        announce(f"installed {' '.join(packages)} in {time.monotonic() - started:.0f}s")


def apt_tool(package: str, binary: str) -> Path:
    """A binary out of a Debian package, unpacked into the cache without installing the
    package (no maintainer scripts, no service started): e.g. ``promtool`` from
    ``prometheus``. Downloads with ``apt-get download``; runs ``apt-get update`` once if
    the package lists are missing."""
    folder = cache_dir() / "apt-tools" / package
    tool = folder / "bin" / binary
    if tool.exists():
        return tool
    with file_lock(folder.with_suffix(".lock")):
        if tool.exists():
            return tool
        download = folder / "download"
        if download.exists():
            shutil.rmtree(download)
        download.mkdir(parents=True)
        cmd = ["apt-get", "download", "-o", "DPkg::Lock::Timeout=300", package]
        try:
            run(cmd, cwd=download, timeout=900)
        except StackError:
            run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=300"], timeout=900)
            run(cmd, cwd=download, timeout=900)
        debs = sorted(download.glob("*.deb"))
        if not debs:
            raise StackError(f"apt-get download {package} left no .deb in {download}")
        unpacked = download / "root"
        run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], timeout=300)
        found = [p for p in (unpacked / "usr" / "bin" / binary, unpacked / "bin" / binary)
                 if p.exists()]
        if not found:
            raise StackError(f"package {package} has no {binary}")
        tool.parent.mkdir(parents=True, exist_ok=True)
        staged = tool.with_suffix(".part")
        shutil.copy2(found[0], staged)
        staged.chmod(staged.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        staged.rename(tool)
        shutil.rmtree(download, ignore_errors=True)
    return tool


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        apt_install(["maven"], Path("/usr/bin/mvn"))
        mvn = "/usr/bin/mvn"
    return mvn


def maven_libs(folder: Path, dependencies: Sequence[str]) -> Path:
    """Resolve ``dependencies`` ("group:artifact:version") and their runtime dependencies
    from Maven Central into ``folder/lib``; returns that lib folder.

    Cached: skipped when ``folder/lib/.complete`` exists (written after a full copy).
    """
    lib = folder / "lib"
    if (lib / MARKER).exists():
        return lib
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if (lib / MARKER).exists():
            return lib
        folder.mkdir(parents=True, exist_ok=True)
        deps = []
        for coord in dependencies:
            g, a, v = coord.split(":")
            deps.append(
                f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                f"<version>{v}</version></dependency>"
            )
        (folder / "pom.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            "  <groupId>local.cdc</groupId><artifactId>" + folder.name + "</artifactId>\n"
            "  <version>0</version><packaging>pom</packaging>\n"
            "  <dependencies>\n" + "\n".join(deps) + "\n  </dependencies>\n</project>\n"
        )
        if lib.exists():
            shutil.rmtree(lib)
        started = time.monotonic()
        announce(f"resolving {', '.join(dependencies)} and their dependencies from Maven "
                 f"Central into {lib} (first run only)...")
        run(
            [
                _mvn(),
                "-B",
                "-q",
                "-f",
                str(folder / "pom.xml"),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={lib}",
            ],
            timeout=1200,
        )
        if not any(lib.glob("*.jar")):
            raise StackError(f"maven copied no jars into {lib}")
        (lib / MARKER).write_text("\n".join(dependencies) + "\n")
        jars = list(lib.glob("*.jar"))
        announce(f"resolved {len(jars)} jars, {sum(j.stat().st_size for j in jars) / 1e6:.0f} "
                 f"MB, in {time.monotonic() - started:.0f}s")
    return lib


def maven_artifact(coordinate: str, dest_dir: Path) -> Path:
    """Download one artifact ("group:artifact:version:type[:classifier]") from Maven
    Central into ``dest_dir`` (skipped when already there); returns the file path.

    Safe when several processes ask at once (two ``cdc stack up`` on an empty cache): one
    downloads under a lock, into a private folder, and the file appears under its name only
    once complete, so nobody unpacks half a download.
    """
    parts = coordinate.split(":")
    g, a, v, t = parts[:4]
    classifier = f"-{parts[4]}" if len(parts) > 4 else ""
    target = dest_dir / f"{a}-{v}{classifier}.{t}"
    if target.exists() and _intact(target):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(dest_dir / f".{target.name}.lock"):
        if target.exists():
            if _intact(target):
                return target
            announce(f"{target} is damaged (not a complete archive): downloading it again")
            target.unlink()
            # Maven's own copy may be the damaged one: fetch that again too.
            local = (Path.home() / ".m2" / "repository" / Path(*g.split(".")) / a / v
                     / target.name)
            local.unlink(missing_ok=True)
        staging = dest_dir / f".{target.name}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        started = time.monotonic()
        announce(f"downloading {coordinate} from Maven Central (first run only)...")
        try:
            run(
                [
                    _mvn(),
                    "-B",
                    "-q",
                    f"{DEPENDENCY_PLUGIN}:copy",
                    f"-Dartifact={coordinate}",
                    f"-DoutputDirectory={staging}",
                ],
                timeout=1200,
                cwd=staging,
            )
            downloaded = staging / target.name
            if not downloaded.exists():
                raise StackError(f"maven did not produce {target}")
            if not _intact(downloaded):
                raise StackError(f"{coordinate} arrived damaged (not a complete archive); "
                                 "run again, or delete it from ~/.m2/repository")
            downloaded.rename(target)
            announce(f"downloaded {target.name}, {target.stat().st_size / 1e6:.0f} MB, in "
                     f"{time.monotonic() - started:.0f}s")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _intact(archive: Path) -> bool:
    """A zip or jar whose central directory is readable, a .tar.gz that reads to its end
    (a truncated download is neither); other types are taken as they are."""
    if archive.name.endswith(".tar.gz"):
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for _ in tar:
                    pass
            return True
        except (tarfile.TarError, OSError, EOFError):
            return False
    if archive.suffix not in (".zip", ".jar"):
        return True
    return zipfile.is_zipfile(archive)


def unzip_once(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest`` once (keeping Unix file modes), marker-guarded.
    Returns ``dest``."""

    def extract(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = Path(zf.extract(info, tmp))
                mode = (info.external_attr >> 16) & 0o7777
                if mode and not stat.S_ISLNK(info.external_attr >> 16):
                    os.chmod(path, mode | (0o755 if info.is_dir() else 0o444))

    return _unpack_once(archive, dest, extract)


def untar_once(archive: Path, dest: Path) -> Path:
    """Unpack the .tar.gz ``archive`` into ``dest`` once, marker-guarded. Returns ``dest``."""

    def extract(tmp: Path) -> None:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")

    return _unpack_once(archive, dest, extract)


def _unpack_once(archive: Path, dest: Path, extract: Callable[[Path], None]) -> Path:
    """``extract`` into a scratch folder renamed to ``dest`` when complete, under a lock, and
    only when ``dest`` has no marker yet: a crash part-way leaves no half-unpacked ``dest``."""
    if (dest / MARKER).exists():
        return dest
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / MARKER).exists():
            return dest
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        announce(f"unpacking {archive.name} into {dest}...")
        extract(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        (dest / MARKER).write_text(f"{archive.name}\n")
    return dest


def ensure_system_user(name: str) -> None:
    """Create the non-root system user ``name`` (no home, no login) if missing."""
    with _user_lock:
        if subprocess.run(["id", "-u", name], capture_output=True).returncode == 0:
            return
        run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]
        )


def chown_tree(path: Path, user: str) -> None:
    """``chown -R user:user path`` (the user's primary group)."""
    run(["chown", "-R", f"{user}:", str(path)])


def check_user_can_write(user: str, folder: Path) -> None:
    """Raise StackError unless ``user`` can reach and write ``folder`` (every parent of
    the state dir must be world-traversable, e.g. not a 0700 temp folder)."""
    probe = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-w", str(folder)], capture_output=True
    )
    if probe.returncode != 0:
        raise StackError(
            f"user {user!r} cannot write {folder}: choose a CDC_STACK_DIR whose parent "
            "folders are world-traversable (chmod o+x)"
        )


def java_bin(*candidates: str) -> str:
    """First existing ``<jdk>/bin/java`` among ``candidates`` (JDK home folders)."""
    for home in candidates:
        java = Path(home) / "bin" / "java"
        if java.exists():
            return str(java)
    raise StackError(f"no Java found in {candidates}")
