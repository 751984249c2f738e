"""Installed packs and the current/previous pointers (edge_agent/model_store.py).

The crash tests kill a real child process with SIGKILL at every crash point of install +
activate and of rollback (the EDGE_AGENT_TEST_KILL_AT hook), then recover in this process:
``current`` must name a whole pack, the old one or the new one, byte for byte."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import model_store
from edge_agent.model_store import CRASH_POINTS, KILL_ENV, ModelStore
from edge_agent.pack import read_pack

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "tests" / "data" / "tiny.pack"
NEW = ROOT / "models" / "default.pack"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _active(models: Path, pack: Path) -> ModelStore:
    store = ModelStore(models)
    store.activate(store.install(pack))
    return store


def _child(models: Path, action: str, kill_at: str | None) -> subprocess.CompletedProcess:
    code = ("import sys\n"
            "from edge_agent.model_store import ModelStore\n"
            "store = ModelStore(sys.argv[1])\n"
            "if sys.argv[2] == 'update':\n"
            "    store.activate(store.install(sys.argv[3]))\n"
            "else:\n"
            "    assert store.rollback() is not None\n")
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", code, str(models), action, str(NEW)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


# the points where the killed child leaves a temp directory or symlink for recover() to remove
LEAVES_TEMP = {"install:tmpdir", "install:written", "install:dir_synced", "activate:previous_link",
               "activate:current_link", "rollback:link"}


def _temps(models: Path) -> list[str]:
    return [p.name for p in models.iterdir() if p.name.startswith(".tmp-")]


def _check_whole(store: ModelStore, allowed: dict[str, str]) -> str:
    """current names one of ``allowed`` (name -> sha256), whole; return its name."""
    cur = store.current()
    assert cur is not None, "current must never be lost"
    digest = _sha(cur)
    assert digest in allowed.values(), "current is a mix of packs"
    assert cur.parent.name == digest[:16]
    read_pack(cur)  # a readable, intact pack
    assert _temps(store.dir) == []
    return next(name for name, d in allowed.items() if d == digest)


def test_every_crash_point_is_listed_and_the_list_is_exact():
    source = Path(model_store.__file__).read_text()
    calls = re.findall(r'_crash_point\("([^"]+)"\)', source)
    assert sorted(calls) == sorted(CRASH_POINTS) and len(set(calls)) == len(calls)
    assert source.count("_crash_point(") == len(CRASH_POINTS) + 1  # the calls and the definition


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if not p.startswith("rollback:")])
def test_a_crash_during_install_and_activate_leaves_a_whole_pack(tmp_path, point):
    models = tmp_path / "models"
    _active(models, OLD)
    result = _child(models, "update", point)
    assert result.returncode == -9, (point, result.returncode, result.stderr[-2000:])
    assert bool(_temps(models)) == (point in LEAVES_TEMP), _temps(models)
    store = ModelStore(models)
    store.recover()
    got = _check_whole(store, {"old": _sha(OLD), "new": _sha(NEW)})
    # until the pointer is replaced the old pack runs; from then on the new one
    assert got == ("new" if point == "activate:current_set" else "old")
    if got == "new":
        assert _sha(store.previous()) == _sha(OLD)
    # after recovery the update simply runs again to completion
    assert _child(models, "update", None).returncode == 0
    store.recover()
    assert _check_whole(store, {"new": _sha(NEW)}) == "new" and _sha(store.previous()) == _sha(OLD)


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p.startswith("rollback:")])
def test_a_crash_during_rollback_leaves_a_whole_pack(tmp_path, point):
    models = tmp_path / "models"
    _active(models, OLD)
    _active(models, NEW)
    result = _child(models, "rollback", point)
    assert result.returncode == -9, (point, result.returncode, result.stderr[-2000:])
    assert bool(_temps(models)) == (point in LEAVES_TEMP), _temps(models)
    store = ModelStore(models)
    store.recover()
    got = _check_whole(store, {"old": _sha(OLD), "new": _sha(NEW)})
    assert got == ("old" if point == "rollback:current_set" else "new")
    assert _sha(store.previous()) == _sha(OLD)
    assert _child(models, "rollback", None).returncode == 0
    assert _check_whole(store, {"old": _sha(OLD)}) == "old"


def test_without_the_hook_the_child_completes(tmp_path):
    models = tmp_path / "models"
    _active(models, OLD)
    result = _child(models, "update", None)
    assert result.returncode == 0, result.stderr
    assert _sha(ModelStore(models).current()) == _sha(NEW)


def test_install_activate_previous_rollback_gc(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.current() is None and store.previous() is None and store.rollback() is None
    old = store.install(OLD)
    assert old == store.dir / _sha(OLD)[:16] / "model.pack" and old.read_bytes() == OLD.read_bytes()
    assert oct(old.stat().st_mode & 0o777) == "0o644"
    assert store.install(OLD) == old  # idempotent
    store.activate(old)
    assert store.current() == old and store.previous() is None
    assert os.readlink(store.dir / "current") == f"{_sha(OLD)[:16]}/model.pack"  # relative
    new = store.install(NEW)
    assert store.current() == old  # installing does not activate
    store.activate(new)
    assert store.current() == new and store.previous() == old
    store.activate(new)  # again: no change, previous kept
    assert store.previous() == old
    assert store.rollback() == old
    assert store.current() == old and store.previous() == old
    store.gc()  # the failed pack is named by neither pointer
    assert sorted(p.name for p in store.dir.iterdir()) == sorted(["current", "previous", _sha(OLD)[:16]])
    assert read_pack(store.current()).describe() == "tiny-test 0.1.0"


def test_gc_keeps_what_the_pointers_name_and_removes_the_rest(tmp_path):
    store = ModelStore(tmp_path)
    a, b = store.install(OLD), store.install(NEW)
    store.activate(a)
    store.activate(b)
    stray = store.install(ROOT / "tests" / "data" / "nan_output.pack")
    (tmp_path / ".tmp-install-zz").mkdir()
    (tmp_path / "README").write_text("left alone")
    store.gc()
    assert not stray.exists() and a.exists() and b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["current", "previous", "README", a.parent.name,
                                                                  b.parent.name])
    assert store.current() == b and store.previous() == a


def test_recover_falls_back_when_the_current_pack_is_damaged_or_gone(tmp_path, caplog):
    store = ModelStore(tmp_path)
    a, b = store.install(OLD), store.install(NEW)
    store.activate(a)
    store.activate(b)
    with open(b, "r+b") as f:  # damaged on disk
        f.seek(100)
        f.write(b"\x00\x01\x02")
    store.recover()
    assert store.current() == a and "back to the previous one" in caplog.text
    # a pointer to a directory that is gone is dropped; with nothing to fall back to: none
    store.activate(store.install(NEW))
    for d in (a.parent, store.current().parent):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    store.recover()
    assert store.current() is None and store.previous() is None
    assert not os.path.lexists(tmp_path / "current") and not os.path.lexists(tmp_path / "previous")


def test_recover_ignores_pointers_that_leave_the_store(tmp_path):
    store = ModelStore(tmp_path / "models")
    store.activate(store.install(OLD))
    outside = tmp_path / "evil.pack"
    outside.write_bytes(NEW.read_bytes())
    os.symlink(str(outside), tmp_path / "models" / ".tmp-x")
    os.replace(tmp_path / "models" / ".tmp-x", tmp_path / "models" / "previous")
    assert store.previous() is None  # only <sha16>/model.pack targets are followed
    store.recover()
    assert not os.path.lexists(tmp_path / "models" / "previous") and outside.exists()
    with pytest.raises(ValueError, match="not a pack installed"):
        store.activate(outside)
