"""Issue 9, item 6: `cdc worker` supervision that holds.

Real child processes (small Python scripts standing in for `cdc worker --sink`), so what is
checked is what the operating system sees: which processes run, with which environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.config import Settings, load_settings
from pipeline.errors import EXIT_PERMANENT
from pipeline.workers import run_all

ROOT = Path(__file__).resolve().parents[2]


def _settings(metrics_port: int | None = None) -> Settings:
    env = {"CDC_POSTGRES__TABLES": "[public.t]", "CDC_REDIS__URL": "redis://127.0.0.1:1/0",
           "CDC_SINKS__AUDIT__TYPE": "webhook", "CDC_SINKS__AUDIT__URL": "http://h/x"}
    if metrics_port is not None:
        env["CDC_METRICS__PORT"] = str(metrics_port)
    return load_settings(None, env)


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _supervise(settings: Settings, command, stop: threading.Event):  # type: ignore[no-untyped-def]
    result: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("code", run_all(settings, stop=stop, command=command)))
    thread.start()
    return thread, result


def test_each_child_gets_its_own_metrics_port(tmp_path: Path) -> None:
    def command(sink: str, _extra: Sequence[str]) -> list[str]:
        return _script(f"""
            import os, pathlib, time
            pathlib.Path({str(tmp_path)!r}, {sink!r}).write_text(os.environ["CDC_METRICS__PORT"])
            time.sleep(60)
        """)

    stop = threading.Event()
    thread, _ = _supervise(_settings(metrics_port=9400), command, stop)
    try:
        assert _wait(lambda: len(list(tmp_path.iterdir())) == 2, 20)
    finally:
        stop.set()
        thread.join(35)
    ports = {f.name: f.read_text() for f in tmp_path.iterdir()}
    # capture keeps metrics.port; the i-th sink's child gets metrics.port + 1 + i
    assert ports == {"cache": "9401", "audit": "9402"}


def test_a_stop_during_a_restart_backoff_ends_at_once_and_starts_nothing(tmp_path: Path) -> None:
    starts = tmp_path / "starts"

    def command(sink: str, _extra: Sequence[str]) -> list[str]:
        # Every start is recorded; the child crashes at once, so a restart backoff begins.
        return _script(f"""
            with open({str(starts)!r}, "a") as f:
                f.write({sink!r} + "\\n")
            raise SystemExit(1)
        """)

    stop = threading.Event()
    thread, result = _supervise(_settings(), command, stop)
    assert _wait(lambda: starts.exists() and len(starts.read_text().split()) >= 2, 20)
    time.sleep(0.5)  # both crashed; the supervisor waits out its backoff
    stopped_at = time.monotonic()
    started_before = len(starts.read_text().split())
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 2.0
    time.sleep(1.5)  # a restart the backoff had scheduled would have happened by now
    assert len(starts.read_text().split()) == started_before
    assert result["code"] == 0


def test_sigterm_stops_every_child_together(tmp_path: Path) -> None:
    def command(sink: str, _extra: Sequence[str]) -> list[str]:
        # A child that takes 1 s to stop on SIGTERM: stopped one after the other, two
        # would take 2 s.
        return _script(f"""
            import os, pathlib, signal, sys, time
            def bye(*_):
                time.sleep(1.0)
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            pathlib.Path({str(tmp_path)!r}, {sink!r}).write_text(str(os.getpid()))
            time.sleep(60)
        """)

    stop = threading.Event()
    thread, _ = _supervise(_settings(), command, stop)
    assert _wait(lambda: len(list(tmp_path.iterdir())) == 2, 20)
    started = time.monotonic()
    stop.set()
    thread.join(35)
    assert time.monotonic() - started < 1.8


def test_a_child_with_a_permanent_error_is_not_restarted(tmp_path: Path) -> None:
    starts = tmp_path / "starts"

    def command(sink: str, _extra: Sequence[str]) -> list[str]:
        code = EXIT_PERMANENT if sink == "audit" else None
        return _script(f"""
            import time
            with open({str(starts)!r}, "a") as f:
                f.write({sink!r} + "\\n")
            if {code!r} is not None:
                raise SystemExit({code!r})
            time.sleep(60)
        """)

    stop = threading.Event()
    thread, result = _supervise(_settings(), command, stop)
    thread.join(35)
    assert not thread.is_alive()
    assert result["code"] == EXIT_PERMANENT
    assert sorted(starts.read_text().split()) == ["audit", "cache"]


SUPERVISOR = """
import os, pathlib, sys, textwrap
sys.path.insert(0, {root!r})
from pipeline.config import load_settings
from pipeline.workers import run_all
settings = load_settings(None, {{"CDC_POSTGRES__TABLES": "[public.t]",
                                "CDC_REDIS__URL": "redis://127.0.0.1:1/0",
                                "CDC_SINKS__AUDIT__TYPE": "webhook",
                                "CDC_SINKS__AUDIT__URL": "http://h/x"}})
child = textwrap.dedent('''
    import os, pathlib, sys, time
    sys.path.insert(0, {root!r})
    from pipeline.workers import die_with_supervisor
    die_with_supervisor()
    pathlib.Path({pids!r}, str(os.getpid())).touch()
    time.sleep(120)
''')
sys.exit(run_all(settings, command=lambda sink, extra: [sys.executable, "-c", child]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR.format(root=str(ROOT), pids=str(pids))])
    try:
        assert _wait(lambda: len(list(pids.iterdir())) == 2, 30)
        children = [int(f.name) for f in pids.iterdir()]
        assert all(_alive(pid) for pid in children)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        assert _wait(lambda: not any(_alive(pid) for pid in children), 10), children
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for f in pids.iterdir():
            if _alive(int(f.name)):
                os.kill(int(f.name), signal.SIGKILL)
