"""The installed model packs and the pointers that say which one runs (docs/UPDATES.md,
"Activation").

Why this layout: a gateway loses power whenever it likes, including in the middle of an
update. Whatever happens, at the next start ``current`` must name a whole pack: the old one
or the new one, never a mix, and never nothing when there was something before. So a pack is
never written where it will be used, and a pointer is never edited in place::

    models/<sha256[:16]>/model.pack   one directory per pack, named by its content
    models/current  -> <sha16>/model.pack   (relative symlink) the pack that runs
    models/previous -> <sha16>/model.pack   the one before it, for rollback

* install: the bytes go to a temp directory in ``models/`` (``.tmp-*``), the file and the
  directory are fsynced, the directory is renamed to its final name, ``models/`` is fsynced.
  A directory under its final name is therefore whole.
* activate: ``previous`` := the old target, then ``current`` := the new pack, each by creating
  a new symlink under a temp name and ``os.replace`` over the pointer (atomic), ``models/``
  fsynced after each.
* rollback: ``current`` := ``previous`` the same way. Afterwards both name the restored pack;
  the failed one is named by neither, and gc removes it.
* recover (at start): temp leftovers removed; a pointer whose target is missing or not whole
  (its sha256 must start with its directory's name) is dropped, ``current`` falling back to
  ``previous``. gc: pack directories no pointer names are removed.

One process owns ``models/`` (the agent); the methods hold a lock against its own threads.

Test hook: :func:`_crash_point` kills the process with SIGKILL at the named step when the
environment variable ``EDGE_AGENT_TEST_KILL_AT`` equals that name (:data:`CRASH_POINTS`);
tests/test_model_store.py uses it to crash a child process at every step. Unset, it does
nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from edge_agent.durable import fsync_dir, sha256_file

log = logging.getLogger(__name__)

PACK_FILE = "model.pack"
CURRENT = "current"
PREVIOUS = "previous"
TMP_PREFIX = ".tmp-"
KILL_ENV = "EDGE_AGENT_TEST_KILL_AT"
CRASH_POINTS = (
    "install:tmpdir", "install:written", "install:dir_synced", "install:renamed", "install:done",
    "activate:previous_link", "activate:previous_set", "activate:current_link", "activate:current_set",
    "rollback:link", "rollback:current_set",
)
_PACK_DIR = re.compile(r"[0-9a-f]{16}")
_TARGET = re.compile(r"([0-9a-f]{16})/model\.pack")


_crash_hits: dict[str, int] = {}


def _crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when EDGE_AGENT_TEST_KILL_AT == name, or at the
    n-th time here with ``name#n``."""
    want = os.environ.get(KILL_ENV)
    if not want or not want.startswith(name):
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if want == name or want == f"{name}#{_crash_hits[name]}":
        os.kill(os.getpid(), signal.SIGKILL)


class ModelStore:
    """Installed packs and the ``current`` / ``previous`` pointers (module docstring)."""

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(models_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- pointers ---------------------------------------------------------------------------------
    def _target(self, pointer: str) -> str | None:
        """The pointer's target (``<sha16>/model.pack``), or None when absent or malformed."""
        try:
            target = os.readlink(self.dir / pointer)
        except OSError:
            return None
        return target if _TARGET.fullmatch(target) else None

    def _resolve(self, pointer: str) -> Path | None:
        target = self._target(pointer)
        if target is None:
            return None
        path = self.dir / target
        return path if path.is_file() else None

    def current(self) -> Path | None:
        """The active pack file (``models/<sha16>/model.pack``), or None."""
        with self._lock:
            return self._resolve(CURRENT)

    def previous(self) -> Path | None:
        with self._lock:
            return self._resolve(PREVIOUS)

    def _link(self, pointer: str, target: str) -> Path:
        """A new symlink to ``target`` under a temp name, to be put over ``pointer``."""
        tmp = self.dir / f"{TMP_PREFIX}{pointer}-{secrets.token_hex(4)}"
        os.symlink(target, tmp)
        return tmp

    def _replace(self, tmp: Path, pointer: str) -> None:
        """``pointer`` := the temp symlink, atomically (rename over it)."""
        try:
            os.replace(tmp, self.dir / pointer)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _point(self, pointer: str, target: str) -> None:
        self._replace(self._link(pointer, target), pointer)

    # -- install, activate, rollback ----------------------------------------------------------------
    def install(self, pack_path: str | os.PathLike[str]) -> Path:
        """Copy a pack into ``models/<sha256[:16]>/model.pack``; return that path. Already
        installed (and whole): returned as is."""
        data = Path(pack_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        final = self.dir / digest[:16]
        with self._lock:
            if final.exists() or final.is_symlink():
                if final.is_dir() and not final.is_symlink() and (final / PACK_FILE).is_file() \
                        and sha256_file(final / PACK_FILE) == digest:
                    return final / PACK_FILE
                log.warning("models: %s is not a whole copy of the pack; installing it again", final)
                self._remove(final)
            tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=f"{TMP_PREFIX}install-"))
            try:
                os.chmod(tmp, 0o755)
                _crash_point("install:tmpdir")
                with open(tmp / PACK_FILE, "xb") as f:
                    os.fchmod(f.fileno(), 0o644)  # a pack is not a secret
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                _crash_point("install:written")
                fsync_dir(tmp)
                _crash_point("install:dir_synced")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _crash_point("install:renamed")
            fsync_dir(self.dir)
            _crash_point("install:done")
            return final / PACK_FILE

    def _installed_target(self, installed: str | os.PathLike[str]) -> str:
        p = Path(installed)
        target = f"{p.parent.name}/{p.name}"
        if not (_TARGET.fullmatch(target) and p.parent.parent.resolve() == self.dir.resolve() and p.is_file()):
            raise ValueError(f"{p} is not a pack installed in {self.dir} (use ModelStore.install)")
        return target

    def activate(self, installed: str | os.PathLike[str]) -> None:
        """Make an installed pack the current one; the current one becomes ``previous``."""
        with self._lock:
            target = self._installed_target(installed)
            old = self._target(CURRENT) if self.current() is not None else None
            if old == target:
                return  # already active: previous keeps naming the one before
            if old is not None:
                tmp = self._link(PREVIOUS, old)
                _crash_point("activate:previous_link")
                self._replace(tmp, PREVIOUS)
                fsync_dir(self.dir)
                _crash_point("activate:previous_set")
            tmp = self._link(CURRENT, target)
            _crash_point("activate:current_link")
            self._replace(tmp, CURRENT)
            _crash_point("activate:current_set")
            fsync_dir(self.dir)
            log.info("models: active %s (previous %s)", target, old)

    def rollback(self) -> Path | None:
        """``current`` := ``previous``; return the now-active pack (None, and nothing changed,
        when there is no previous pack)."""
        with self._lock:
            if self.previous() is None:
                return None
            target = self._target(PREVIOUS)
            tmp = self._link(CURRENT, target)
            _crash_point("rollback:link")
            self._replace(tmp, CURRENT)
            _crash_point("rollback:current_set")
            fsync_dir(self.dir)
            log.warning("models: rolled back to %s", target)
            return self.current()

    # -- housekeeping -----------------------------------------------------------------------------
    def _whole(self, pointer: str) -> bool:
        """The pointer names a pack file whose sha256 starts with its directory's name."""
        target = self._target(pointer)
        if target is None:
            return False
        path = self.dir / target
        try:
            return path.is_file() and sha256_file(path).startswith(path.parent.name)
        except OSError:
            return False

    def recover(self) -> None:
        """At start: remove what a crash left (temp directories and symlinks) and drop a pointer
        that does not name a whole pack, ``current`` falling back to ``previous``."""
        with self._lock:
            for entry in self.dir.iterdir():
                if entry.name.startswith(TMP_PREFIX):
                    self._remove(entry)
            prev_ok = self._whole(PREVIOUS)
            if not self._whole(CURRENT):
                had = os.path.lexists(self.dir / CURRENT)
                if prev_ok:
                    if had:
                        log.warning("models: current pack missing or damaged; back to the previous one")
                    self._point(CURRENT, self._target(PREVIOUS))
                elif had:
                    log.error("models: current pack missing or damaged, and no previous pack to fall back to")
                    self._remove(self.dir / CURRENT)
            if not prev_ok and os.path.lexists(self.dir / PREVIOUS):
                log.warning("models: previous pack missing or damaged; no rollback target")
                self._remove(self.dir / PREVIOUS)
            fsync_dir(self.dir)

    def gc(self) -> None:
        """Remove pack directories neither pointer names, and temp leftovers."""
        with self._lock:
            named = {t.split("/")[0] for t in (self._target(CURRENT), self._target(PREVIOUS)) if t}
            for entry in self.dir.iterdir():
                if entry.name.startswith(TMP_PREFIX) or (
                        _PACK_DIR.fullmatch(entry.name) and entry.name not in named
                        and entry.is_dir() and not entry.is_symlink()):
                    self._remove(entry)
            fsync_dir(self.dir)

    def _remove(self, entry: Path) -> None:
        """Remove a file, symlink or directory (a directory renamed to a temp name first, so it
        never exists half-removed under its own name)."""
        if entry.is_dir() and not entry.is_symlink():
            if not entry.name.startswith(TMP_PREFIX):
                trash = self.dir / f"{TMP_PREFIX}gc-{entry.name}-{secrets.token_hex(4)}"
                os.rename(entry, trash)
                entry = trash
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
