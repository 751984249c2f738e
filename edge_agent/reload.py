"""SIGHUP: read the config file again and apply what is safe to change in a running agent.

The signal handler only raises a flag (daemon.py); :func:`reload_config` runs on the
processing thread, between two batches, so no stage is reconfigured while it works.

Steps: load and validate the file (``load_config``; a file that fails is refused, one log
line per problem, and the running config stays); diff it against the running config key by
key (:func:`changed_keys`); apply the keys that are safe live (:data:`LIVE`) through small
methods on the Agent; log the others as ``needs a restart: key, key`` and leave them as
they run. The agent's ``cfg`` becomes the running config with the live keys replaced
(:func:`merge`), so a later reload diffs against what really runs and says again what still
waits for a restart. Counted in the status snapshot (``reloads``).

What is live, and why it is safe (each applied between batches, state kept):

* ``logging.level``: the root logger's level;
* ``[alerts]`` and ``[[alert_rule]]``: k of n, clear count, severity, on/off per type, the
  baseline's anomaly threshold (a pack's own threshold wins, as at start). The rules are
  retuned in place: open alerts and each channel's recent history are kept (a shorter
  window keeps the latest windows). Switching the ``iso_zone`` rule on or off rebuilds
  the zone rules (their open alerts start again, as after a restart);
* ``[publish]``: summary and status intervals (from now on), MQTT QoS of the next publishes;
* ``[quality]``: action, check limits, alert_after / clear_after (open alerts kept);
* ``[drift]``: every knob; a new drift interval starts (sketches and recent windows start
  again, the open drift alerts and alarm counts are kept);
* ``[updates]`` except ``trusted_keys_dir``: limits and thresholds of the next offer, chunk,
  shadow gate and health check (one already running keeps the values it started with).

Everything else needs a restart: the device identity and topics (``[device]``), the broker
connection (``[broker]``), the sources (``[[source]]``), the window, shaft, bearing and
feature settings (the windower and the feature extractor, and a pack's reference, are
built from them), the model (``[model]``), the storage dir and outbox size
(``[storage]``), the queues, the log format, the trusted keys, the ISO zones
(``[[iso_zone]]``), and any section this module does not know (a key not listed is never
applied live).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from fnmatch import fnmatchcase
from typing import Any

log = logging.getLogger(__name__)

# Dotted keys (fnmatch patterns) that are applied live; table lists are named by their
# TOML name ("alert_rule") and compared whole. The rest needs a restart.
LIVE = ("logging.level", "alerts.*", "alert_rule", "publish.*", "quality.*", "drift.*", "updates.*")
NOT_LIVE = ("updates.trusted_keys_dir",)
# Config fields that are tuples of tables, by their TOML name.
TABLE_LISTS = {"sources": "source", "alert_rules": "alert_rule", "iso_zones": "iso_zone"}


def is_live(key: str) -> bool:
    return not any(fnmatchcase(key, p) for p in NOT_LIVE) and any(fnmatchcase(key, p) for p in LIVE)


def changed_keys(old: Any, new: Any) -> list[str]:
    """The dotted keys whose value differs (``section.key``; a table list by its TOML name)."""
    out = []
    for f in dataclasses.fields(old):
        if f.name == "origin":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name, None)
        if f.name in TABLE_LISTS or not dataclasses.is_dataclass(a):
            if a != b:
                out.append(TABLE_LISTS.get(f.name, f.name))
            continue
        if b is None or type(a) is not type(b):
            out.append(f.name)
            continue
        out += [f"{f.name}.{k.name}" for k in dataclasses.fields(a) if getattr(a, k.name) != getattr(b, k.name)]
    return out


def merge(old: Any, new: Any, keys: list[str]) -> Any:
    """``old`` with the values of ``keys`` taken from ``new``."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    by_toml = {v: k for k, v in TABLE_LISTS.items()}
    for key in keys:
        if key in by_toml:
            top[by_toml[key]] = getattr(new, by_toml[key])
        elif "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
        else:
            top[key] = getattr(new, key)
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(old, section), **values)
    return dataclasses.replace(old, **top)


class ReloadCounts:
    """Reloads since start, for the status snapshot."""

    def __init__(self) -> None:
        self.ok = 0
        self.refused = 0
        self.last: dict | None = None
        self.needs_restart: list[str] = []  # keys changed in the file that wait for a restart

    def as_dict(self) -> dict:
        return {"ok": self.ok, "refused": self.refused, "needs_restart": list(self.needs_restart),
                "last": self.last}


def reload_config(agent: Any, path: str) -> dict:
    """Read ``path`` again and apply its live keys to ``agent`` (processing thread). Never
    raises: a bad file or a failure while applying is a refused reload, logged and counted."""
    from edge_agent.config import ConfigError, load_config

    counts: ReloadCounts = agent.reloads
    t = time.time()
    try:
        new = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config reload refused, the running config stays: %s", problem)
        counts.refused += 1
        counts.last = {"time": t, "result": "refused", "problems": exc.problems[:20]}
        return counts.last
    except Exception as exc:  # noqa: BLE001 - bad input never crashes the agent
        log.error("config reload refused, the running config stays: %s: %s", path, exc)
        counts.refused += 1
        counts.last = {"time": t, "result": "refused", "problems": [str(exc)]}
        return counts.last
    old = agent.cfg
    changed = changed_keys(old, new)
    live = [k for k in changed if is_live(k)]
    restart = [k for k in changed if not is_live(k)]
    if live:
        try:
            apply_live(agent, merge(old, new, live), live)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the agent
            log.exception("config reload failed while applying %s; the keys applied before the failure stay",
                          ", ".join(live))
            counts.refused += 1
            counts.last = {"time": t, "result": "refused", "problems": [f"{type(exc).__name__}: {exc}"]}
            return counts.last
    if restart:
        log.warning("config reload: needs a restart: %s (ignored until then)", ", ".join(restart))
    if live:
        log.info("config reload: applied %s", ", ".join(live))
    elif not restart:
        log.info("config reload: %s has no changes", path)
    counts.ok += 1
    counts.needs_restart = restart
    counts.last = {"time": t, "result": "ok", "applied": live, "needs_restart": restart}
    return counts.last


def apply_live(agent: Any, cfg: Any, keys: list[str]) -> None:
    """Apply the live ``keys`` of ``cfg`` (the merged config) to the agent."""
    sections = {k.split(".", 1)[0] for k in keys}
    agent.cfg = cfg
    if "logging" in sections:
        logging.getLogger().setLevel(getattr(logging, cfg.logging.level.upper()))
    if "alerts" in sections or "alert_rule" in sections:
        agent.set_alert_rules(cfg)
    if "quality" in sections:
        agent.set_quality(cfg)
    if "drift" in sections:
        agent.set_drift(cfg)
    if "publish" in sections:
        agent.set_publish(cfg)
    if "updates" in sections:
        agent.set_updates(cfg)


# -- retuning alert hysteresis in place (open alerts and recent history kept) ---------------
def retune_hysteresis(h: Any, raise_after: int, raise_window: int, clear_after: int) -> None:
    """An alerts.Hysteresis to new k of n and m; each channel keeps its latest windows."""
    h.raise_after, h.clear_after = raise_after, clear_after
    if h.raise_window != raise_window:
        h.raise_window = raise_window
        for st in h._channels.values():
            st.recent = deque(st.recent, maxlen=raise_window)


def retune_typed(typed: Any, default: Any, rules: dict) -> None:
    """An alerts.TypedHysteresis to a new default rule and per-type rules."""
    typed.default, typed.rules = default, rules
    for kind, h in typed._by_type.items():
        r = typed.rule(kind)
        retune_hysteresis(h, r.raise_after, r.raise_window, r.clear_after)
