"""The ``edge-agent`` command line (see ../shared/CONTRACT.md for the fixed part).

Every command has ``--help``; bad arguments exit 2 with one line, never a traceback.
Heavy imports happen inside the handlers so that ``--help`` and ``config check`` stay fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edge_agent import __version__

EXIT_OK = 0
EXIT_USAGE = 2

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _rate(text: str) -> float:
    value = _positive_float(text) if text not in ("0", "0.0") else 0.0
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _emulator_fs(text: str) -> float:
    value = _positive_float(text)
    if not 1000 <= value <= 200000:
        raise argparse.ArgumentTypeError(f"must be from 1000 to 200000 Hz, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser(fleet_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line. ``fleet_commands=False`` leaves out the options of ``fleet
    push/status/drift``, whose modules (MQTT, transfers, sketches) take ~50 ms to import:
    main() builds them only when the command is ``fleet`` (or none is given)."""
    p = OneLineParser(prog="edge-agent", description="Edge inference runtime for wind-turbine predictive maintenance.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    run = sub.add_parser("run", help="run the daemon (SIGTERM drains and exits 0)")
    run.add_argument("--config", required=True, metavar="FILE", help="TOML configuration (see deploy/edge-agent.toml)")

    demo = sub.add_parser("demo", help="emulator + agent (+ a local broker when mosquitto is installed)")
    demo.add_argument("--seconds", type=_positive_float, metavar="N", help="stop after N seconds (default: until Ctrl-C)")
    from edge_agent.emulator.signal import SCENARIOS

    demo.add_argument("--scenario", choices=SCENARIOS, default="inner_race", help="emulated machine (default: inner_race, fault onset at 5 s)")
    demo.add_argument("--channels", type=int, default=2, choices=range(1, 9), metavar="C", help="accelerometer channels (1-8, default 2)")
    demo.add_argument("--speedup", type=_positive_float, default=1.0, metavar="X", help="emulate X times faster than real time")
    demo.add_argument("--no-broker", action="store_true", help="do not start a local mosquitto")

    replay = sub.add_parser("replay", help="the daemon's pipeline on a recording (.npz, .csv, .wav)")
    replay.add_argument("file", metavar="FILE")
    replay.add_argument("--fs", type=_positive_float, metavar="HZ", help="sample rate (overrides the file)")
    replay.add_argument("--rpm", type=_positive_float, metavar="RPM", help="shaft speed (overrides the file)")
    replay.add_argument("--model", metavar="PACK", help="model pack (default: models/default.pack)")
    replay.add_argument("--jsonl", action="store_true", help="one JSON object per window on stdout")
    replay.add_argument("--serial", action="store_true",
                        help="everything in this process: no feature worker computing ahead (a long "
                             "recording on 2+ cores gets one; the output is the same)")

    emulate = sub.add_parser(
        "emulate", help="the sensor MCU emulator on a new pty",
        description="The sensor MCU on a new pty, reachable at the symlink PATH: streams vibration, speed and "
        "temperature frames of the wire protocol once the gateway sends START, and answers PING, START, STOP, "
        "SET_RATE and TIME_SYNC. Ctrl-C or SIGTERM stops it (exit 0, link removed).",
    )
    emulate.add_argument("--link", required=True, metavar="PATH", help="symlink to create to the pty")
    emulate.add_argument("--scenario", required=True, choices=SCENARIOS, help="machine condition; disconnect: the port vanishes for 5 s every 20 s")
    emulate.add_argument("--seconds", type=_positive_float, metavar="N", help="stop after N seconds (default: until Ctrl-C or SIGTERM)")
    emulate.add_argument("--fs", type=_emulator_fs, default=25600.0, metavar="HZ", help="accelerometer sample rate, 1000-200000 (default 25600)")
    emulate.add_argument("--channels", type=int, default=4, choices=range(1, 17), metavar="C", help="accelerometer channels (1-16, default 4)")
    emulate.add_argument("--corrupt", type=_rate, default=0.0, metavar="RATE", help="fraction of frames to corrupt on the wire (0-1)")
    emulate.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed: the same seed gives the same bytes (default 0)")
    emulate.add_argument("--stats", metavar="FILE", help="write a JSON account at exit: frames sent per stream, corruptions, disconnects")
    emulate.add_argument("--fault-at", type=_non_negative_float, metavar="SECONDS",
                         help="the fault (or sensor failure, or first disconnect) starts SECONDS after acquisition starts; "
                         "healthy signal until then (default 5); its onset time is printed and in --stats")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    config_sub.required = True
    check = config_sub.add_parser("check", help="validate a config file: exit 0 and one line, or 2 and one line per problem")
    check.add_argument("file", metavar="FILE")

    model = sub.add_parser("model", help="inspect and verify model packs")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    model_sub.required = True
    info = model_sub.add_parser("info", help="show a pack: name, version, labels, features, tensors, members; checks its hashes")
    info.add_argument("pack", metavar="PACK")
    info.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    verify = model_sub.add_parser("verify", help="exit 0 only for an intact pack signed by a trusted key")
    verify.add_argument("pack", metavar="PACK")
    verify.add_argument("--trusted-key", metavar="FILE", action="append",
                        help="a trusted public key (NAME.pub) or a directory of *.pub files; repeatable")

    alerts = sub.add_parser("alerts", help="the local alert log for technicians")
    alerts.add_argument("--config", metavar="FILE")
    alerts.add_argument("--open", action="store_true", help="only open alerts")
    alerts.add_argument("--json", action="store_true")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    ack = alerts_sub.add_parser("ack", help="acknowledge an alert")
    ack.add_argument("id", metavar="ID")
    ack.add_argument("--by", required=True, metavar="NAME")
    ack.add_argument("--verdict", choices=("confirmed", "false_alarm"))
    ack.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)  # before or after the subcommand
    export = alerts_sub.add_parser("export", help="write acknowledged alerts' evidence as labelled data")
    export.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    export.add_argument("--out", metavar="DIR", default="alert-evidence",
                        help="directory for the .npz files and index.csv (default ./alert-evidence); "
                             "models/build.py --evidence DIR reads it")

    status = sub.add_parser("status", help="health, model, backend, queue depth, counters")
    status.add_argument("--config", metavar="FILE", help="config of the daemon to ask (default: its storage dir default)")
    status.add_argument("--json", action="store_true")

    fleet = sub.add_parser("fleet", help="the operator's side: model updates (#8) and the fleet's drift view")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", parser_class=OneLineParser)
    fleet_sub.required = True
    keygen = fleet_sub.add_parser("keygen", help="write NAME.key (private, 0600) and NAME.pub")
    keygen.add_argument("name", metavar="NAME")
    sign = fleet_sub.add_parser("sign", help="sign a pack in place")
    sign.add_argument("pack", metavar="PACK")
    sign.add_argument("--key", required=True, metavar="NAME.key", help="private key from 'fleet keygen' (mode 0600)")
    if not fleet_commands:
        return p
    from edge_agent.fleet_push import add_push_parser
    from edge_agent.fleet_status import add_status_parser

    add_push_parser(fleet_sub)  # #8: model updates over MQTT (docs/UPDATES.md, "Fleet side")
    add_status_parser(fleet_sub)
    from edge_agent.fleet_drift import add_drift_parser

    add_drift_parser(fleet_sub)  # issue #6: the fleet side of the drift sketches
    return p


# One-shot commands that leave nothing behind (their temporary files removed, their worker
# joined) and end the process at once when they are its entry point: the interpreter's
# teardown of their objects and modules took 40-75 ms of a 1000 s replay's ~0.7 s
# (benches/RESULTS.md); nothing in it is needed once the output is flushed.
QUICK_EXIT = frozenset({"replay"})


def main(argv: list[str] | None = None) -> int:
    entry = argv is None  # the process's own command line: the console script, python -m
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(fleet_commands=command in (None, "fleet"))
    args = parser.parse_args(argv)
    try:
        code = _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    if entry and args.command in QUICK_EXIT:
        _quick_exit(code)
    return code


def _quick_exit(code: int) -> None:
    """Flush what the command wrote and end the process without the interpreter's teardown."""
    import logging

    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (| head): as main() treats it
        code = EXIT_OK
    try:
        sys.stderr.flush()
    except OSError:
        pass
    logging.shutdown()
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    sub = getattr(args, f"{args.command}_command", None)
    what = f"{args.command} {sub}" if sub else args.command
    if what == "fleet drift":  # #6
        from edge_agent.fleet_drift import run_fleet_drift

        return run_fleet_drift(args)
    if what == "fleet push":  # #8: model updates over MQTT
        from edge_agent.fleet_push import run_fleet_push

        return run_fleet_push(args)
    if what == "fleet status":
        from edge_agent.fleet_status import run_fleet_status

        return run_fleet_status(args)
    if what == "fleet keygen":  # #8: keys and signatures (edge_agent/signing.py)
        return cmd_fleet_keygen(args.name)
    if what == "fleet sign":
        return cmd_fleet_sign(args.pack, args.key)
    if what == "model verify":
        return cmd_model_verify(args.pack, args.trusted_key or [])
    if args.command == "alerts":
        return cmd_alerts(args)
    if what == "model info":
        return cmd_model_info(args.pack, args.json)
    if args.command == "config":
        return cmd_config_check(args.file)
    if args.command == "status":
        return cmd_status(args.config, args.json)
    if args.command == "run":
        from edge_agent.daemon import run_daemon

        return run_daemon(args.config)
    if args.command == "demo":
        from edge_agent.demo import run_demo

        return run_demo(
            seconds=args.seconds, scenario=args.scenario, channels=args.channels,
            speedup=args.speedup, broker=not args.no_broker,
        )
    if args.command == "replay":
        from edge_agent.replay_cmd import run_replay

        return run_replay(args.file, fs=args.fs, rpm=args.rpm, model=args.model, jsonl=args.jsonl,
                          serial=args.serial)
    if args.command == "emulate":
        from edge_agent.emulator.mcu import EmulateOptions, run_emulate

        if args.fault_at is not None and args.scenario == "healthy":
            print("edge-agent emulate: error: argument --fault-at: the healthy scenario has no fault; choose another "
                  "scenario (see 'edge-agent emulate --help')", file=sys.stderr)
            return EXIT_USAGE
        return run_emulate(EmulateOptions(
            link=args.link, scenario=args.scenario, seconds=args.seconds, fs=args.fs, channels=args.channels,
            corrupt=args.corrupt, seed=args.seed, stats=args.stats, fault_at=args.fault_at,
        ))
    raise AssertionError(f"unhandled command {args.command}")  # the parser allows no other


def _load_config_or_report(path: str):
    from edge_agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_config_check(path: str) -> int:
    cfg = _load_config_or_report(path)
    if cfg is None:
        return EXIT_USAGE
    print(f"{path}: ok ({len(cfg.sources)} source(s), device {cfg.device.site}/{cfg.device.id}, broker {cfg.broker.host}:{cfg.broker.port})")
    return EXIT_OK


def cmd_model_info(path: str, as_json: bool) -> int:
    """Describe a pack after checking it (hashes, schema); one line and exit 2 when unusable."""
    from edge_agent.pack import PackError, read_pack

    try:
        pack = read_pack(path)
    except PackError as exc:
        print(f"edge-agent model info: {exc}", file=sys.stderr)
        return EXIT_USAGE
    m = pack.manifest
    if as_json:
        print(json.dumps({"manifest": m, "signed": pack.signature is not None}, indent=1, sort_keys=True))
        return EXIT_OK
    feats = m["features"]
    print(f"pack:       {pack.path}")
    print(f"model:      {m['name']} {m['version']} (created {m['created']})")
    print(f"labels:     {', '.join(m['labels'])}")
    print(f"features:   {len(feats['names'])}: {', '.join(feats['names'])}")
    if "window_length" in feats:
        scaled = (f" at {feats['window_reference_fs_hz']:g} Hz, scaled with the rate"
                  if isinstance(feats.get("window_reference_fs_hz"), (int, float)) else "")
        print(f"window:     {feats['window_length']} samples, hop {feats.get('hop')}{scaled}, rates {feats.get('fs_range')} Hz")
    for role, t in m["tensors"].items():
        quant = f", scale {t.get('scale'):.6g}, zero point {t.get('zero_point')}" if "scale" in t else ""
        print(f"tensor:     {role} {t.get('name')} {t.get('dtype')} {t.get('shape')}{quant}")
    print(f"thresholds: {json.dumps(m['thresholds'], sort_keys=True)}")
    for name, digest in sorted(m["members"].items()):
        print(f"member:     {name} sha256 {digest} ({len(pack.members[name])} bytes)")
    print(f"signature:  {'present (verify: edge-agent model verify)' if pack.signature else 'none (unsigned)'}")
    return EXIT_OK


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def cmd_fleet_keygen(name: str) -> int:
    """``fleet keygen NAME``: NAME.key (0600) and NAME.pub; never overwrites."""
    from edge_agent.signing import KeyFileError, key_id, keygen, load_public_key

    try:
        key_path, pub_path = keygen(name)
        kid = key_id(load_public_key(pub_path))
    except KeyFileError as exc:
        print(f"edge-agent fleet keygen: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {key_path} (mode 0600; keep it secret, sign with: edge-agent fleet sign PACK --key {key_path})")
    print(f"public key:  {pub_path} (copy it to the devices' [updates] trusted_keys_dir)")
    print(f"key id:      {kid}")
    return EXIT_OK


def cmd_fleet_sign(pack_path: str, key_path: str) -> int:
    """``fleet sign PACK --key NAME.key``: sign in place (a damaged pack is refused)."""
    from edge_agent.pack import PackError
    from edge_agent.signing import KeyFileError, load_private_key, sign_pack

    try:
        pack = sign_pack(pack_path, load_private_key(key_path))
    except (KeyFileError, PackError) as exc:
        print(f"edge-agent fleet sign: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{pack_path}: signed by {pack.signature['key_id']} ({pack.describe()})")
    return EXIT_OK


def cmd_model_verify(pack_path: str, trusted_sources: list[str]) -> int:
    """``model verify PACK --trusted-key FILE|DIR ...``: exit 0 only for an intact pack signed by
    a trusted key. A named key file that cannot be used is an error; in a directory, a bad
    ``*.pub`` is skipped with a warning line."""
    from edge_agent.signing import KeyFileError, SignatureError, trusted_from_arguments, verify_pack_file

    prog = "edge-agent model verify"
    if not trusted_sources:
        print(f"{prog}: no trusted key given (--trusted-key NAME.pub, or a directory of *.pub files)", file=sys.stderr)
        return EXIT_USAGE
    try:
        trusted, problems = trusted_from_arguments(trusted_sources)
    except KeyFileError as exc:
        print(f"{prog}: trusted key {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    for problem in problems:
        print(f"{prog}: warning: {_one_line(problem)}", file=sys.stderr)
    if not trusted:
        print(f"{prog}: no usable trusted key in {', '.join(trusted_sources)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pack = verify_pack_file(pack_path, trusted)
    except SignatureError as exc:
        print(f"{prog}: {pack_path}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{pack_path}: signed by {pack.signature['key_id']}, intact ({pack.describe()})")
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    """``alerts [--open] [--json]``, ``alerts ack ID --by NAME [--verdict V]``, ``alerts export``:
    the local alert log (edge_agent/alert_log.py), no broker or daemon needed."""
    from edge_agent.alert_log import AlertLog, AlertLogError, as_json_rows, format_table
    from edge_agent.config import default_config

    config_path = getattr(args, "config", None)
    cfg = _load_config_or_report(config_path) if config_path else default_config()
    if cfg is None:
        return EXIT_USAGE
    sub = args.alerts_command
    prog = f"edge-agent alerts{' ' + sub if sub else ''}"
    try:
        log_ = AlertLog(cfg.storage.dir, create=False)
    except AlertLogError as exc:
        if sub is None and not args.json:
            print(f"no alerts ({exc})")
            return EXIT_OK
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if sub == "ack":
            done = log_.ack(args.id, args.by, args.verdict)
            print(f"alert {done['alert_id']} acknowledged by {done['by']}"
                  f"{' (' + done['verdict'] + ')' if done['verdict'] else ''}; the daemon sends it to the fleet "
                  "when the link is up")
            return EXIT_OK
        if sub == "export":
            rows = log_.export(args.out)
            print(f"{len(rows)} acknowledged alert(s) with a verdict and evidence written to {args.out}/ (index.csv)")
            return EXIT_OK
        rows = log_.list(open_only=args.open)
        print(as_json_rows(rows) if args.json else format_table(rows))
        return EXIT_OK
    except AlertLogError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        log_.close()


def cmd_status(config_path: str | None, as_json: bool) -> int:
    from edge_agent.config import default_config
    from edge_agent.interpreter import NoInterpreterBackend, load_backend
    from edge_agent.status_file import read_status

    cfg = _load_config_or_report(config_path) if config_path else default_config()
    if cfg is None:
        return EXIT_USAGE
    try:
        backend = load_backend(cfg.model.backend).describe()
    except (NoInterpreterBackend, ValueError) as exc:
        backend = f"none ({exc})"
    snap = read_status(Path(cfg.storage.dir))
    doc = {"agent_version": __version__, "interpreter_backend": backend, "storage_dir": cfg.storage.dir, "daemon": snap}
    if as_json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return EXIT_OK
    print(f"edge-agent {__version__}")
    print(f"interpreter backend: {backend}")
    print(f"storage dir:         {cfg.storage.dir}")
    if snap is None:
        print("daemon:              no status file (the daemon has not run with this storage dir)")
        return EXIT_OK
    import time

    age = time.time() - snap.get("time", 0)
    c, q, b = snap.get("counters", {}), snap.get("queues", {}), snap.get("broker", {})
    print(f"daemon:              {snap.get('state')} (status written {age:.0f} s ago), device {snap.get('device')}")
    print(f"model:               {snap.get('model')} on {snap.get('backend')}")
    print(f"broker:              {_describe_link(b)}")
    print(f"queues:              samples {q.get('samples', {}).get('depth')}/{q.get('samples', {}).get('max')} (dropped {q.get('samples', {}).get('dropped')}), outbox {q.get('outbox', {}).get('depth')}")
    print(f"windows:             {c.get('windows')} {c.get('windows_per_label')}")
    print(f"alerts:              {c.get('alerts_raised')} raised, {c.get('open_alerts')} open; processing errors {c.get('processing_errors')}")
    lat = c.get("alert_latency_ms") or {}
    if lat.get("alerts"):
        print(f"alert latency:       p50 {lat['p50']} ms, p99 {lat['p99']} ms (window complete -> committed, last {lat['alerts']})")
    up = snap.get("updates") or {}
    if up:
        print(f"model update:        {up.get('state')}" + (f" ({up.get('pack_version')})" if up.get("pack_version") else "")
              + (f", reason {up.get('reason')}" if up.get("reason") else ""))
    rl = snap.get("reloads") or {}
    if rl.get("ok") or rl.get("refused"):
        print(f"config reloads:      {rl.get('ok')} ok, {rl.get('refused')} refused"
              + (f"; needs a restart: {', '.join(rl['needs_restart'])}" if rl.get("needs_restart") else ""))
    return EXIT_OK


def _describe_link(b: dict) -> str:
    """One line on the uplink from the status file's ``broker`` part."""
    if not b.get("enabled", True):
        return "disabled ([broker] enabled = false): local alert log only"
    state = "connected" if b.get("connected") else "not connected"
    line = f"{b.get('address')} {state}{' (TLS)' if b.get('tls') else ''}, {b.get('published', 0)} published, {b.get('connects', 0)} connects"
    if b.get("failures"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(b.get("failures_by_reason", {}).items()))
        line += f", {b['failures']} failed attempts ({reasons})"
    if not b.get("connected") and b.get("last_error"):
        line += f"; last error: {b['last_error']}"
        if b.get("next_attempt_in_s") is not None:
            line += f"; next attempt in {b['next_attempt_in_s']:.0f} s"
    return line


if __name__ == "__main__":
    sys.exit(main())
