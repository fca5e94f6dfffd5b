"""A damaged cached download is noticed and fetched again, not unpacked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipeline.stack import install


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", "x" * 1000)


def test_a_truncated_archive_in_the_cache_is_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "thing-1.0.zip"
    _zip(target)
    target.write_bytes(target.read_bytes()[:-30])  # cut off the central directory
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> None:
        calls.append(cmd)
        out = Path(str(kwargs["cwd"])) / target.name
        _zip(out)

    monkeypatch.setattr(install, "run", fake_run)
    monkeypatch.setattr(install, "_mvn", lambda: "mvn")
    monkeypatch.setattr(install.Path, "home", staticmethod(lambda: tmp_path / "home"))
    got = install.maven_artifact("org.example:thing:1.0:zip", tmp_path)
    assert got == target and zipfile.is_zipfile(target)
    assert len(calls) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and "downloading org.example:thing:1.0:zip" in err
    # Intact now: the next call downloads nothing.
    install.maven_artifact("org.example:thing:1.0:zip", tmp_path)
    assert len(calls) == 1


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage tool reads an id starting with '-' as an option; CI failed on one."""
    import uuid

    from pipeline.stack import kafka

    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # url-safe base64 "-A..."
    draws = iter([dash_first, uuid.UUID(int=1 << 120)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cid = kafka.new_cluster_id()
    assert not cid.startswith("-") and len(cid) == 22
