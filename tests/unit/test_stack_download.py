"""Issue 9, item 6: two `cdc stack up` on an empty cache raced on the Elasticsearch
download; the second took the first one's half-written zip for a complete one."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.stack import install

COORD = "org.example:thing:1.0:zip"


def _zip_bytes() -> bytes:
    """A real zip archive (a damaged one is refused), about 64 KB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("payload", bytes(range(256)) * 256)
    return buffer.getvalue()


PAYLOAD = _zip_bytes()
SIZE = len(PAYLOAD)


def test_concurrent_downloads_download_once_and_see_only_a_complete_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads: list[str] = []
    writing = threading.Event()

    def slow_mvn(cmd: list[str], **_kw: Any) -> None:
        """Maven writing the artifact in pieces, as a real download does."""
        downloads.append(cmd[-1])
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory="))
                   .split("=", 1)[1]) / "thing-1.0.zip"
        piece = -(-SIZE // 16)
        with out.open("wb") as f:
            for i in range(16):
                f.write(PAYLOAD[i * piece:(i + 1) * piece])
                f.flush()
                writing.set()
                time.sleep(0.02)

    monkeypatch.setattr(install, "run", slow_mvn)
    monkeypatch.setattr(install, "_mvn", lambda: "mvn")
    seen: list[int] = []

    def up() -> None:
        seen.append(install.maven_artifact(COORD, tmp_path / "downloads").stat().st_size)

    first = threading.Thread(target=up)
    first.start()
    assert writing.wait(5)
    second = threading.Thread(target=up)  # starts while the first one is downloading
    second.start()
    first.join(10)
    second.join(10)
    assert seen == [SIZE, SIZE]
    assert len(downloads) == 1
    assert [p.name for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")] \
        == ["thing-1.0.zip"]


def test_a_failed_download_leaves_nothing_that_looks_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_mvn(cmd: list[str], **_kw: Any) -> None:
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory="))
                   .split("=", 1)[1]) / "thing-1.0.zip"
        out.write_bytes(b"half")
        raise install.StackError("connection reset")

    monkeypatch.setattr(install, "run", broken_mvn)
    monkeypatch.setattr(install, "_mvn", lambda: "mvn")
    with pytest.raises(install.StackError):
        install.maven_artifact(COORD, tmp_path / "downloads")
    assert not (tmp_path / "downloads" / "thing-1.0.zip").exists()
