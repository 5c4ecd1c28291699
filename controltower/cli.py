"""The `controltower` command.

    controltower demo [--port 8050] [--data-dir DIR] [--duration S] [--seed N]
    controltower run --config FILE [--data-dir DIR] [--port N] [--duration S]
    controltower simulate (--config FILE | --sites N [--lines M]) [--speed X] [--seed N] [--duration S] [--opcua-url U] [--mqtt-url U]
                          [--mqtt-payload json_unit|json_tag|batched_json|sparkplug_b]
    controltower evaluate --scenario FILE [--json]
    controltower inject TAG|UNIT --kind spike|drift|stuck|...|cooling_failure|... [--duration S] [--magnitude X]
                        [--mqtt-url U] [--prefix P]
    controltower detect --train TRAIN --test TEST --out OUT [--method auto|pca|dpca|iforest|knn|wpca|wknn] [--alpha 0.01]
                        [--exclude COL ...] [--margin F] [--on-delay ROWS]
    controltower browse URL [--root NODE] [--depth N] [--include GLOB] [--exclude GLOB] [--yaml]
    controltower config check FILE
    controltower config schema
    controltower history TAG --since T [--until T] [--format csv|parquet] [--out FILE] [--config FILE]
    controltower model fit --config FILE --unit PATH --kind pca|dpca|iforest|golden|spc (--from T [--to T] | --batches ID,..) [--out DIR]
    controltower model list [--config FILE] [--out DIR] [--json]
    controltower users add|passwd|role|remove|list [NAME] [--role R] (--config FILE | --data-dir DIR)
    controltower audit verify|show (--config FILE | --data-dir DIR) [--expect-head SEQ:HASH]
    controltower collect --config FILE [--instance N] [--source NAME ...] [--data-dir DIR] [--duration S]
    controltower analyse --config FILE [--worker NAME] [--data-dir DIR] [--duration S]
    controltower serve --config FILE [--name NAME] [--data-dir DIR] [--host H] [--port N] [--duration S]

Exit codes: 0 done, 1 runtime failure, 2 bad usage or bad config (the message names the file,
the key and the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from controltower.samples import PATH_COLUMNS
from controltower.site import (
    PROCESS_FAULT_UNIT_KINDS,
    SENSOR_FAULT_KINDS,
    SiteConfigError,
    load_site_config,
    site_json_schema,
)
from controltower.timeparse import parse_time

log = logging.getLogger("controltower")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0..65535, got {text}")
    return value


# Subcommands whose options come from heavy modules (scikit-learn/scipy, asyncua): their options
# are only loaded when that subcommand is the one run, so `controltower config check` stays fast.
LAZY_SUBCOMMANDS = {
    "detect": ("analytics.offline", "add_detect_arguments",
               "replay a recording through the multivariate models (CSV/Parquet in, CSV out)"),
    "browse": ("collector.sources.opcua_browse", "add_browse_arguments",
               "list an OPC-UA server's variables (units, EURange); --yaml prints tag bindings"),
    "evaluate": ("simulators.evaluate", "add_evaluate_arguments",
                 "run a fault scenario offline through the detectors and print the scorecard"),
    "model": ("analytics.model_command", "add_model_arguments",
              "fit a unit's multivariate, golden-batch or SPC centre-line model from the historian and store it, or list them"),
    "users": ("controltower.security_cli", "add_users_arguments",
              "add, change, remove or list the users of the screen and API (passwords never as arguments)"),
    "audit": ("controltower.security_cli", "add_audit_arguments",
              "verify the audit trail's hash chain, or show its last records"),
    "collect": ("controltower.services", "add_collect_arguments",
                "scaled out: sources -> spool -> historian, and every batch to the UNS on MQTT (docs/uns.md)"),
    "analyse": ("controltower.services", "add_analyse_arguments",
                "scaled out: detectors on the UNS partitions this worker owns; alerts to the UNS (docs/uns.md)"),
    "serve": ("controltower.serve", "add_serve_arguments",
              "scaled out: the screen and API, fed from the UNS and the historian (docs/uns.md)"),
}


def _command_word(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="controltower", description="Industrial IoT control tower for pharma sites.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulated plant + broker + collectors + historian + detectors + screen, one process")
    demo.add_argument("--port", type=_port, default=8050, help="screen and API port (default 8050; 0 picks a free one)")
    demo.add_argument("--host", default="127.0.0.1", help="address the screen binds to (default 127.0.0.1)")
    demo.add_argument("--data-dir", type=Path, default=Path("data/demo"), help="historian, ground truth, dead letters")
    demo.add_argument("--duration", type=_positive_float, help="stop cleanly after this many seconds")
    demo.add_argument("--seed", type=int, help="simulator seed (default from the config: 42)")
    demo.add_argument("--speed", type=_positive_float, help="simulated seconds per wall-clock second (default 1)")
    demo.add_argument("--mqtt-url", help="use this MQTT broker (mqtt://host:port) instead of the embedded one")
    demo.add_argument("--mqtt-port", type=_port, default=1883, help="port of the embedded MQTT broker (default 1883)")
    demo.add_argument("--opcua-port", type=_port, default=4840, help="port of the simulated OPC-UA server (default 4840)")

    run = sub.add_parser("run", help="collectors + detectors + screen for a configured site")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--data-dir", type=Path, help="overrides data_dir from the config")
    run.add_argument("--host", help="overrides screen.host")
    run.add_argument("--port", type=_port, help="overrides screen.port")
    run.add_argument("--duration", type=_positive_float, help="stop cleanly after this many seconds")

    simulate = sub.add_parser("simulate", help="run a simulated plant alone (OPC-UA server + MQTT publisher)")
    plant = simulate.add_mutually_exclusive_group(required=True)
    plant.add_argument("--config", type=Path, help="the site file to simulate")
    plant.add_argument("--sites", type=_positive_int, help="generate an enterprise of this many sites instead")
    simulate.add_argument("--lines", type=_positive_int, default=22, help="lines per generated site (default 22)")
    simulate.add_argument("--data-dir", type=Path, help="where the ground-truth log goes (default: data_dir of the config)")
    simulate.add_argument("--speed", type=_positive_float)
    simulate.add_argument("--seed", type=int)
    simulate.add_argument("--duration", type=_positive_float)
    simulate.add_argument("--opcua-url", help="serve OPC-UA here instead of simulation.opcua_url ('none' disables)")
    simulate.add_argument("--mqtt-url", help="publish to this broker instead of simulation.mqtt_url ('none' disables)")
    simulate.add_argument(
        "--mqtt-payload",
        choices=["json_unit", "json_tag", "batched_json", "sparkplug_b"],
        help="MQTT payload format of every line instead of simulation.mqtt_payload (see simulators/README.md)",
    )

    inject = sub.add_parser("inject", help="inject a fault into a running simulator (over its MQTT command topic)")
    inject.add_argument("tag", metavar="TARGET",
                        help="sensor fault: full tag id, e.g. lyon.ff.fill1.filler1.fill_weight; "
                             "process fault: unit path, e.g. lyon.usp.bio1.br101")
    inject.add_argument("--kind", required=True, choices=[*SENSOR_FAULT_KINDS, *PROCESS_FAULT_UNIT_KINDS])
    inject.add_argument("--duration", type=_positive_float, default=30.0, help="simulated seconds (default 30)")
    inject.add_argument("--magnitude", type=float, default=None,
                        help="spike/bias: offset; drift: offset reached at the end; noise: std; oscillation: "
                             "amplitude (default 0); process faults: severity in (0, 1] (default 1)")
    inject.add_argument("--period", type=_positive_float, default=60.0, help="oscillation period, seconds (default 60)")
    inject.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="the simulator's broker")
    inject.add_argument("--prefix", default="plant", help="the simulator's simulation.mqtt_topic_prefix (default plant)")

    command = _command_word(sys.argv[1:] if argv is None else argv)
    for name, (module, add_arguments, help_text) in LAZY_SUBCOMMANDS.items():
        lazy = sub.add_parser(name, help=help_text)
        if command == name:
            getattr(importlib.import_module(module), add_arguments)(lazy)

    config = sub.add_parser("config", help="validate a site file or print its JSON Schema")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a site file")
    check.add_argument("file", type=Path)
    config_sub.add_parser("schema", help="print the JSON Schema of site files")

    history = sub.add_parser("history", help="export a tag's history from the historian")
    history.add_argument("tag", help="full tag id, e.g. lyon.usp.bio1.br101.temperature")
    history.add_argument("--since", required=True, help="ISO-8601 time, or a duration before now: 1h, 30m (or --since=-1h)")
    history.add_argument("--until", help="ISO-8601 time or a duration before now (default: now)")
    history.add_argument("--format", choices=["csv", "parquet"], default="csv")
    history.add_argument("--out", type=Path, help="file to write (default: standard output for csv)")
    history.add_argument("--config", type=Path, help="site file naming the historian (default: the demo site)")
    history.add_argument("--data-dir", type=Path, help="data directory (default: data/demo for the demo site)")
    history.add_argument(
        "--url", help="read through a running control tower's API instead (e.g. http://127.0.0.1:8050): "
        "the embedded historian's file is locked while the tower runs; with auth on, set CONTROLTOWER_USER "
        "and CONTROLTOWER_PASSWORD"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party chatter drowns our own lines (asyncua warns about every unsecured test
    # endpoint and negotiated timeout); --log-level DEBUG shows it all again.
    if args.log_level != "DEBUG":
        for noisy in ("asyncua", "amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from collector.sinks import HistorianError

    try:
        return _dispatch(args)
    except HistorianError as exc:
        print(f"controltower: historian: {exc}", file=sys.stderr)
        return 1
    except SiteConfigError as exc:
        print(f"controltower: invalid site config\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"controltower: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        if args.config_command == "schema":
            print(json.dumps(site_json_schema(), indent=2))
            return 0
        site = load_site_config(args.file)
        print(f"{args.file}: ok ({len(site.sites)} site(s), {len(site.tag_table())} tag(s), {len(site.sources)} source(s))")
        return 0
    if args.command == "demo":
        from controltower.demo import DemoOptions, run_demo

        options = DemoOptions(
            port=args.port, host=args.host, data_dir=args.data_dir, duration_s=args.duration, seed=args.seed,
            speed=args.speed, mqtt_url=args.mqtt_url, mqtt_port=args.mqtt_port, opcua_port=args.opcua_port,
        )
        return _run_async(run_demo(options))
    if args.command == "run":
        return _run_async(_run_site(args))
    if args.command == "simulate":
        from simulators.service import simulate

        if args.sites is not None:
            from simulators.enterprise import build_enterprise

            site = build_enterprise(args.sites, args.lines, seed=args.seed if args.seed is not None else 42)
        else:
            site = load_site_config(args.config)
        if args.mqtt_payload is not None:
            from controltower.site import SimulationConfig

            simulation = (site.simulation or SimulationConfig()).model_copy(
                update={"mqtt_payload": args.mqtt_payload, "mqtt_payloads": {}}
            )
            site = site.model_copy(update={"simulation": simulation})
        overrides: dict[str, Any] = {}
        for name in ("opcua_url", "mqtt_url"):
            value = getattr(args, name)
            if value is not None:
                overrides[name] = None if value.lower() == "none" else value
        if args.speed is not None:
            overrides["speed"] = args.speed
        if args.seed is not None:
            overrides["seed"] = args.seed
        return _run_async(
            simulate(site, data_dir=args.data_dir or Path(site.data_dir), duration_s=args.duration, **overrides)
        )
    if args.command == "history":
        return _history(args)
    if args.command == "detect":
        from analytics.offline import run_detect

        return run_detect(args)
    if args.command == "model":
        from analytics.model_command import run_model

        return run_model(args)
    if args.command == "evaluate":
        from simulators.evaluate import run_evaluate

        return run_evaluate(args)
    if args.command == "browse":
        from collector.sources.opcua_browse import run_browse

        return run_browse(args)
    if args.command == "inject":
        return _run_async(_inject(args))
    if args.command == "users":
        from controltower.security_cli import run_users

        return run_users(args)
    if args.command == "audit":
        from controltower.security_cli import run_audit

        return run_audit(args)
    if args.command == "collect":
        from controltower.services import run_collect

        return _run_async(run_collect(load_site_config(args.config), data_dir=args.data_dir, instance=args.instance,
                                      sources=args.source, duration_s=args.duration))
    if args.command == "serve":
        from controltower.serve import run_serve

        return _run_async(run_serve(load_site_config(args.config), data_dir=args.data_dir, name=args.name,
                                    host=args.host, port=args.port, duration_s=args.duration))
    if args.command == "analyse":
        from controltower.services import run_analyse

        return _run_async(run_analyse(load_site_config(args.config), data_dir=args.data_dir, worker=args.worker,
                                      duration_s=args.duration))
    raise AssertionError(args.command)


async def _run_site(args: argparse.Namespace) -> None:
    from controltower.runtime import ControlTower

    site = load_site_config(args.config)
    tower = ControlTower(site, data_dir=args.data_dir)
    try:
        tower.start_screen(host=args.host, port=args.port)
        await tower.run(args.duration)
    finally:
        tower.close()


async def _inject(args: argparse.Namespace) -> None:
    from urllib.parse import urlsplit

    import aiomqtt

    from simulators.mqtt_publisher import INJECT_TOPIC

    url = urlsplit(args.mqtt_url)
    process = args.kind in PROCESS_FAULT_UNIT_KINDS
    magnitude = args.magnitude if args.magnitude is not None else (1.0 if process else 0.0)
    command = {"unit" if process else "tag_id": args.tag, "kind": args.kind, "duration_s": args.duration,
               "magnitude": magnitude, "period_s": args.period}
    try:
        async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883, timeout=10) as client:
            await client.publish(f"{args.prefix}/{INJECT_TOPIC}", json.dumps(command).encode(), qos=1)
    except aiomqtt.MqttError as exc:
        raise ValueError(f"cannot reach the broker at {args.mqtt_url}: {exc}") from None
    print(f"asked the simulator to inject a {args.kind} on {args.tag} for {args.duration:g}s "
          f"(it logs the injection in its ground truth; an unknown target is refused in its log)")


def _run_async(coro: Coroutine[Any, Any, Any]) -> int:
    """Run until done or SIGINT/SIGTERM, then stop cleanly (the coroutine's finally blocks run)."""

    async def supervised() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopped")

    asyncio.run(supervised())
    return 0


def _history(args: argparse.Namespace) -> int:
    since = parse_time(args.since)
    until = parse_time(args.until) if args.until else None
    if until is not None and until <= since:
        raise ValueError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})")
    if args.format == "parquet" and args.out is None:
        raise ValueError("--format parquet needs --out FILE")
    frame = _history_from_api(args, since, until) if args.url else _history_from_historian(args, since, until)
    if args.format == "parquet":
        frame.write_parquet(args.out)
    else:
        text = frame.with_columns(frame["quality"].cast(str)).write_csv()
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
    if args.out is not None:
        print(f"{frame.height} samples of {args.tag} written to {args.out}", file=sys.stderr)
    return 0


def _history_from_historian(args: argparse.Namespace, since: datetime, until: datetime | None) -> pl.DataFrame:
    from collector.sinks import open_historian
    from controltower.demo import DEMO_CONFIG

    config_path = args.config or DEMO_CONFIG
    site = load_site_config(config_path)
    data_dir = args.data_dir or (Path("data/demo") if args.config is None else Path(site.data_dir))
    known = {t.tag_id for t in site.tag_table()}
    if args.tag not in known:
        raise ValueError(f"unknown tag {args.tag!r} in {config_path}; known tags: {', '.join(sorted(known))}")
    historian = open_historian(site.historian, data_dir)
    try:
        return historian.read([args.tag], since, until)
    finally:
        historian.close()


def _history_from_api(args: argparse.Namespace, since: datetime, until: datetime | None) -> pl.DataFrame:
    from urllib.error import HTTPError, URLError
    from urllib.parse import quote, urlencode

    from controltower.samples import samples_frame
    from controltower.security_cli import api_opener

    query = {"since": since.isoformat()} | ({"until": until.isoformat()} if until else {})
    url = f"{args.url.rstrip('/')}/api/tags/{quote(args.tag, safe='')}/history?{urlencode(query)}"
    try:
        # Logged in as $CONTROLTOWER_USER (password $CONTROLTOWER_PASSWORD) when set.
        with api_opener(args.url).open(url, timeout=30) as response:
            rows = json.loads(response.read())
    except HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise ValueError(f"{args.url}: {reason}") from None
    except URLError as exc:
        raise ValueError(f"cannot reach the control tower at {args.url}: {exc.reason}") from None
    frame = samples_frame(
        ts=pl.Series([r["ts"] for r in rows], dtype=pl.String).str.to_datetime(time_unit="ns", time_zone="UTC"),
        tag_id=[args.tag] * len(rows),
        value=[r["value"] for r in rows],
        quality=[r["quality"] for r in rows],
        batch_id=[r.get("batch_id") for r in rows],
    )
    return frame.drop("server_ts", *PATH_COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
