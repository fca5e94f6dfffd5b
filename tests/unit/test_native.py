"""The compiled capture hot path (pipeline/native.py): same results as its sources, and never
older than them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import native

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pgoutput" / "pgoutput_v1.json"

#: Run in a child: decodes every fixture message (and corrupted copies of each), converts every
#: column value of the fixture's tuples in the three decimal modes, and builds the envelopes
#: of its inserts, updates and deletes; prints one JSON line per result, errors included.
#: With ``pure`` it first makes the compiled modules' sources load instead of them.
CHILD = r'''
import importlib.util, json, random, sys
from pathlib import Path
if sys.argv[1] == "pure":
    from pipeline import native
    class Sources:
        def find_spec(self, name, path=None, target=None):
            prefix = "pipeline.sources.postgres."
            if name.startswith(prefix) and name[len(prefix):] in native.MODULES:
                file = native.PACKAGE / (name[len(prefix):] + ".py")
                return importlib.util.spec_from_file_location(name, file)
            return None
    sys.meta_path.insert(0, Sources())
from pipeline.sources.postgres import envelope, pgoutput, values
assert pgoutput.__file__.endswith(".py") == (sys.argv[1] == "pure"), pgoutput.__file__
cases = json.loads(Path(sys.argv[2]).read_text())["cases"]
payloads = [bytes.fromhex(m["hex"]) for c in sorted(cases) for m in cases[c]["messages"]]
rnd = random.Random(7)
for p in list(payloads):
    for _ in range(20):
        b = bytearray(p); b[rnd.randrange(len(b))] = rnd.randrange(256); payloads.append(bytes(b))
    payloads.append(p[: rnd.randrange(len(p))])
relations = {}
def out(*parts):
    print(json.dumps(parts, default=repr, sort_keys=True))
for p in payloads:
    try:
        msg = pgoutput.decode_message(p)
    except pgoutput.PgoutputDecodeError as exc:
        out("error", str(exc)); continue
    out("message", repr(msg))
    if type(msg) is pgoutput.Relation:
        relations[msg.oid] = msg
        continue
    tuples = [getattr(msg, n, None) for n in ("new", "old")]
    rel = relations.get(getattr(msg, "relation_oid", -1))
    if rel is None:
        continue
    for mode in ("string", "double", "precise"):
        convs = [values.converter_for(c.type_oid, c.type_modifier, mode) for c in rel.columns]
        for t in tuples:
            for conv, text in zip(convs, t or ()):
                if isinstance(text, str):
                    try:
                        out("value", mode, conv(text))
                    except Exception as exc:
                        out("refused", mode, type(exc).__name__)
    shape = envelope.TableShape.from_relation(
        rel, tuple(c.name for c in rel.columns if c.is_key) or (rel.columns[0].name,))
    writer = envelope.EnvelopeWriter("srv", "db")
    writer.begin(envelope.TransactionContext(xid=7, commit_ts_us=1_700_000_000_000_001,
                                             last_commit_lsn=99))
    if type(msg) in (pgoutput.Insert, pgoutput.Update, pgoutput.Delete):
        try:
            out("envelope", [list(x) for x in writer.encode(msg, shape, 1234, b"5678")])
        except Exception as exc:
            out("envelope refused", type(exc).__name__, str(exc))
    if type(msg) is pgoutput.Insert:
        try:
            out("row", pgoutput.insert_row(p, shape.names, shape.converters, None))
        except pgoutput.PgoutputDecodeError as exc:
            out("row refused", str(exc))
'''


def _run(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(FIXTURE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.skipif(not native.compiled(), reason="the capture hot path is not compiled here")
def test_the_compiled_hot_path_gives_what_its_sources_give() -> None:
    compiled, pure = _run("compiled"), _run("pure")
    assert len(compiled) == len(pure) > 1000
    kinds = {json.loads(line)[0] for line in pure}
    assert {"error", "message", "value", "envelope", "row"} <= kinds
    for mine, theirs in zip(compiled, pure, strict=True):
        assert mine == theirs


SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package of stand-in sources that ``native`` looks after instead of the real one."""
    package = tmp_path / "postgres"
    package.mkdir()
    for name in native.MODULES:
        (package / f"{name}.py").write_text(f"X = {name!r}\n")
    monkeypatch.setattr(native, "PACKAGE", package)
    monkeypatch.setattr(native, "STAMP", package / "_compiled.json")
    # without the finder this process may have installed for a stale real build
    monkeypatch.setattr(sys, "meta_path",
                        [f for f in sys.meta_path if not isinstance(f, native._Sources)])
    return package


def _fake_build(package: Path) -> list[Path]:
    built = [package / f"{stem}{SUFFIX}" for stem in native._expected()]
    for path in built:
        path.write_bytes(b"\x7fELF")
    native.STAMP.write_text(json.dumps(native._stamp()))
    return built


def _finds_sources() -> bool:
    """Whether imports of the compiled modules now find their sources first."""
    first = sys.meta_path[0]
    spec = first.find_spec("pipeline.sources.postgres.values", None)
    return (isinstance(first, native._Sources) and spec is not None
            and spec.origin == str(native.PACKAGE / "values.py"))


def test_a_build_older_than_its_sources_is_never_run(package: Path) -> None:
    built = _fake_build(package)
    assert native.current()
    native.use_sources_if_stale()  # as built: nothing to do
    assert not any(isinstance(f, native._Sources) for f in sys.meta_path)
    (package / "values.py").write_text("X = 'edited'\n")
    assert not native.current()
    native.use_sources_if_stale()
    assert _finds_sources()  # the edited source loads, not the build
    assert all(p.exists() for p in built)  # nothing deleted under another process


def test_a_partial_build_or_one_without_a_stamp_is_not_run(package: Path) -> None:
    built = _fake_build(package)
    built[-1].unlink()  # the shared library of the group is missing
    assert not native.current()
    native.STAMP.unlink()
    (package / f"pgoutput{SUFFIX}").write_bytes(b"\x7fELF")
    native.use_sources_if_stale()
    assert _finds_sources()


def test_a_change_of_a_module_the_compiled_ones_rely_on_makes_the_build_stale(
    package: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "events.py").write_text("A = 1\n")
    monkeypatch.setattr(native, "ROOT", root)
    monkeypatch.setattr(native, "DEPENDS", ("sub/events.py",))
    _fake_build(package)
    assert native.current()
    (root / "sub" / "events.py").write_text("A: str = '1'\n")
    assert not native.current()


def test_clean_removes_a_build(package: Path) -> None:
    built = _fake_build(package)
    native.clean()
    assert not any(p.exists() for p in built) and not native.STAMP.exists()
    assert (package / "values.py").exists()  # the sources stay


def test_cdc_native_0_keeps_plain_python(
    package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built = _fake_build(package)
    monkeypatch.setenv("CDC_NATIVE", "0")
    assert native.build() is False
    assert "plain Python" in capsys.readouterr().out
    assert not any(p.exists() for p in built)
