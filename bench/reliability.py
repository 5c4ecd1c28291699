"""Reliability figures for docs/reliability.md: the fault tests run against real processes
(Mosquitto, InfluxDB 1.6.7, the project's simulator and OPC-UA server, `controltower run`), each
recording what the simulator emitted and what the historian holds (tests/integration/figures.py);
then one table. Not part of CI (the InfluxDB outage lasts minutes here).

    .venv/bin/python bench/reliability.py                     # the faults (InfluxDB outage 180 s), writes the doc
    .venv/bin/python bench/reliability.py --outage-s 20 --no-write
    .venv/bin/python bench/reliability.py --fuzz-logs /tmp/fuzzrun  # only the fuzz-run section, from its logs

The fuzz-run section is read from the logs of a dedicated run (one pytest per tests/fuzz file with
CONTROLTOWER_FUZZ_EXAMPLES set and --hypothesis-show-statistics, output in <dir>/<file>.log,
the progress lines in <dir>/progress); the soak section is bench/soak.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/ (the script's directory: bench/collector.py is no package)

from benchdoc import write_section

DOC = REPO / "docs" / "reliability.md"
INTRO = """# Reliability

What the control tower survives, measured on real processes (nothing mocked): Mosquitto, InfluxDB
1.6.7, the project's simulator and OPC-UA server, and the collector as `controltower run` or
in-process `ControlTower`. Each fault is an automated test under tests/integration (run in CI with
short faults); `bench/reliability.py` runs them with longer faults and writes the table below,
`bench/soak.py` the soak, and the fuzz-run section comes from a dedicated run of tests/fuzz.
"""
# The fault tests, in the table's order (each records its own figures).
TESTS = [
    "tests/integration/test_store_and_forward.py::test_outage_spools_to_disk_then_forwards_each_batch_once",
    "tests/integration/test_store_and_forward.py::test_kill_9_while_influxdb_is_down_then_every_spooled_sample_is_stored_once",
    "tests/integration/test_mqtt_no_loss.py::test_kill_9_mid_stream_loses_no_published_sample",
    "tests/integration/test_mqtt_broker_restart.py::test_a_steady_stream_through_a_broker_restart_loses_no_acked_message",
    "tests/integration/test_spool_disk_full.py::test_disk_full_holds_the_source_then_everything_is_stored_once",
    "tests/integration/test_opcua_connection_loss.py::test_server_loss_marks_tags_stale_records_the_gap_and_reconnects",
    "tests/integration/test_clock_jump.py",
]
MEANING = """What each figure means:
- **emitted**: what the source of truth sent. The simulator's own samples where it is the source
  (ticks x tags, or its frames as published, or the same seed replayed: `Plant(site, seed,
  start).run(...)` reproduces exactly what it published), also for the broker restart and the
  kill -9 mid-stream, where the simulator is the MQTT edge (their stored values are compared with
  the replay one by one: none differed).
- **stored**: rows read back from the historian (InfluxDB or DuckDB, or the HTTP API over it); for
  the broker restart and the OPC-UA restart, samples the collector's source delivered.
- **lost**: emitted (tag, timestamp) with no stored row (clock jumps: (tag, timestamp, value), since
  the same timestamp comes twice).
- **duplicates**: stored rows beyond the distinct (tag, timestamp).
- **recovery**: seconds from the end of the fault (the server or disk back, the process
  restarted) to the first new value stored or received; the note says which event each test times.
"""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores shared with other jobs (load average "
            f"{os.getloadavg()[0]:.1f} at the start), {platform.system()} {platform.release()}, "
            f"CPython {platform.python_version()}")


def commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()


def run_faults(outage_s: float, out: Path) -> tuple[int, float]:
    env = dict(os.environ, CONTROLTOWER_RELIABILITY_OUT=str(out), CONTROLTOWER_OUTAGE_S=str(outage_s))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout",
                           str(int(outage_s) + 600), *TESTS], cwd=REPO, env=env, check=False)
    return proc.returncode, time.monotonic() - started


def _num(n: int) -> str:
    return f"{n:,}"


def faults_section(rows: list[dict], rc: int, seconds: float, command: str, outage_s: float) -> str:
    lines = [
        "## Faults survived",
        "",
        (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{command}` (InfluxDB outage {outage_s:.0f} s), commit {commit()}, "
         f"{machine()}. The tests {'all passed' if rc == 0 else f'did NOT all pass (pytest exit code {rc})'} "
         f"in {seconds / 60:.1f} min."),
        "",
        "| scenario | emitted | stored | lost | duplicates | recovery (s) | what the design promises |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        recovery = "n/a" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        lines.append(f"| {r['scenario']} | {_num(r['emitted'])} | {_num(r['stored'])} | **{_num(r['lost'])}** | "
                     f"{_num(r['duplicates'])} | {recovery} | {r['promise']} |")
    lines += ["", MEANING, "Notes per scenario (from the tests):", ""]
    lines += [f"- *{r['scenario']}*: {r['notes']}." for r in rows]
    phases = next((r["phases"] for r in rows if r.get("phases") and "DuckDB" in r["scenario"]), None)
    if phases:
        lines += ["", ("Clock jumps, per phase (DuckDB run; received counts straddle the phase boundaries, as "
                       "messages are in flight; the screen's view is `line_states`, read at the end of the phase, "
                       "with stale_after_s 1.5 s):"), "",
                  "| phase | plant clock - wall clock (s) | published | received | alerts | screen: age (s) | stale |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {p['phase']} | {p['plant_offset_s']:.1f} | {p['published']} | {p['received']} | {p['alerts']} | "
                  f"{p['screen_age_s']} | {p['screen_stale']} |" for p in phases]
    return "\n".join(lines) + "\n"


# --- the fuzz run --------------------------------------------------------------------------------

STATS = re.compile(r"^(?P<test>tests/fuzz/\S+::\S+):\s*$")
# "- 1009 passing, 4 failing, and 52 invalid test cases" (older hypothesis: "... passing examples, ...").
COUNTS = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?, (?:and )?(\d+) invalid")
STOPPED = re.compile(r"Stopped because (.+)")


def parse_fuzz_log(text: str) -> list[dict]:
    """Per property: passing/failing/invalid examples (hypothesis statistics), why it stopped."""
    props: list[dict] = []
    for line in text.splitlines():
        if m := STATS.match(line.strip()):
            props.append({"test": m["test"].split("::")[1], "passing": 0, "failing": 0, "invalid": 0, "stopped": ""})
        elif props and (m := COUNTS.search(line)):
            for key, value in zip(("passing", "failing", "invalid"), m.groups(), strict=True):
                props[-1][key] += int(value)
        elif props and (m := STOPPED.search(line)):
            props[-1]["stopped"] = m[1].strip()
    return props


def _rejection_table(counts: dict[str, int], limit: int = 60) -> list[str]:
    lines = ["| reason | count |", "|---|---:|"]
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    lines += [f"| {k.replace('|', '/')} | {v:,} |" for k, v in ranked[:limit]]
    if len(ranked) > limit:
        lines.append(f"| ({len(ranked) - limit} more kinds) | {sum(v for _, v in ranked[limit:]):,} |")
    return lines


def _reports(logs: Path, prefix: str) -> dict[str, dict[str, int]]:
    """Rejection counts per target, summed over its processes (<target>[.<property>].rejections.json)."""
    merged: dict[str, dict[str, int]] = {}
    for report in sorted(logs.glob(f"{prefix}*.rejections.json")):
        target = report.name.removeprefix(prefix).split(".")[0]
        into = merged.setdefault(target, {})
        for reason, count in json.loads(report.read_text()).items():
            if isinstance(count, int):
                into[reason] = into.get(reason, 0) + count
    return merged


DONE = re.compile(r"^Done (\d+) in (\d+) second")
COVERAGE = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/")


def atheris_section(logs: Path) -> list[str]:
    """The coverage-guided runs (tests/fuzz/atheris_decoders.py), from atheris.<target>.log."""
    runs = sorted(logs.glob("atheris.*.log"))
    if not runs:
        return []
    lines = ["### Coverage-guided (atheris)", "",
             ("`python -m tests.fuzz.atheris_decoders <target> -atheris_runs=100000 <corpus dir>` (atheris "
             f"{_version('atheris')}, libFuzzer; the decoder modules instrumented; seeded with a few valid "
             "messages): inputs run, edges and features covered at the end, crashes (an exception out of "
             "`handle_message`, a batch not of the sample schema, or an input neither giving a sample nor "
             "counted)."), "",
             "| target | inputs | seconds | inputs/s | edges | features | corpus | crashes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    reports = _reports(logs, "atheris.")
    for log in runs:
        target = log.stem.removeprefix("atheris.")
        text = log.read_text(errors="replace")
        done = [m for line in text.splitlines() if (m := DONE.match(line))]
        cov = COVERAGE.findall(text)
        inputs, seconds = (int(done[-1][1]), int(done[-1][2])) if done else (0, 0)
        edges, features, corpus = cov[-1] if cov else ("-", "-", "-")
        crashes = len(list(logs.glob(f"crash_{target}_*")))
        rate = f"{inputs / seconds:,.0f}" if seconds else "-"
        lines.append(f"| {target} | {inputs:,} | {seconds} | {rate} | {edges} | {features} | {corpus} | {crashes} |")
    for target, counts in reports.items():
        unit = "rows (1 to 5 per input)" if target == "line_protocol" else "inputs (one may be rejected for more than one reason)"
        lines += ["", f"{target}: what became of the {unit}:", ""]
        lines += _rejection_table(counts)
    return lines + [""]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def _span(progress: str) -> str:
    """When the run's processes started and ended (its progress file), as a sentence."""
    stamps = sorted(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d", progress))
    return f" Its processes ran between {stamps[0].replace('T', ' ')} and {stamps[-1][11:]} UTC." if stamps else ""


def fuzz_section(logs: Path) -> str:
    progress = (logs / "progress").read_text() if (logs / "progress").exists() else ""
    ends = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^(\S+) rc=(\d+) seconds=(\d+)", progress, re.MULTILINE)}
    lines = ["## Fuzz run", "",
             (f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the logs of a dedicated run on this machine "
              f"({os.cpu_count()} shared cores, at nice 0-5 beside other jobs): each tests/fuzz file on its own (or one "
              "process per property, `<file>.py::<property>`), "
              "`CONTROLTOWER_FUZZ_EXAMPLES=<n> CONTROLTOWER_FUZZ_REPORT=<json> pytest tests/fuzz/<file>.py --timeout=0 "
              "--hypothesis-show-statistics` (n is per property, chosen so that a target's properties add up to "
              "at least 100,000 inputs). Counts are hypothesis's own, summed over its phases (passing = ran and "
              "held; failing = inputs that broke the property, shrinking included; invalid = rejected by the "
              "strategy's filters, not run)." + _span(progress)), "",
             "| target (file) | property | inputs run (passing) | failing | invalid | stopped because |",
             "|---|---|---:|---:|---:|---|"]
    by_target: dict[str, list[Path]] = {}
    for log in sorted(logs.glob("test_*.log")):
        by_target.setdefault(log.stem.split(".")[0], []).append(log)
    totals = []
    for name, target_logs in by_target.items():
        props, states = [], []
        for log in target_logs:
            text = log.read_text(errors="replace")
            log_props = parse_fuzz_log(text)
            props += log_props
            rc, seconds = ends.get(log.stem, (None, None))
            summary = re.search(r"^=*\s*(.*(?:passed|failed).*) in ([\d.]+)s", text, re.MULTILINE)
            if rc is None and summary:  # its runner was replaced mid-way: pytest's own summary line says
                rc, seconds = (1 if "failed" in summary[1] else 0), float(summary[2])
            states.append((rc, seconds))
            for p in log_props:
                lines.append(f"| {name} | {p['test']} | {p['passing']:,} | {p['failing']} | {p['invalid']:,} | "
                             f"{p['stopped'] or '-'} |")
        if any(rc is None for rc, _ in states):
            state = "still running when this was written"
        else:
            codes = sorted({rc for rc, _ in states})
            longest = max(seconds for _, seconds in states)
            where = f"{len(states)} processes, the longest " if len(states) > 1 else ""
            state = f"pytest exit {', '.join(map(str, codes))}, {where}{longest / 60:.0f} min"
        totals.append(f"- {name}: {sum(p['passing'] for p in props):,} inputs over {len(props)} properties ({state})")
    lines += ["", "Per target:", "", *totals, ""]
    for target, counts in _reports(logs, "test_").items():
        if target == "test_api_params":
            continue
        lines += [(f"{target}: rejections by reason ({sum(v for k, v in counts.items() if k not in ('accepted', 'encoded')):,} "
                  f"of {sum(counts.values()):,} inputs):"), ""]
        lines += _rejection_table(counts, limit=30) + [""]
    report = logs / "api_rejections.json"
    if report.exists():
        counts = json.loads(report.read_text())
        rejected = {k: v for k, v in counts.items() if not k.endswith(" accepted")}
        lines += [(f"API rejections by route, status and reason ({sum(rejected.values()):,} of "
                   f"{sum(counts.values()):,} requests; the values quoted in a message are shown as …): each a "
                   "JSON `{\"error\"}` with a 4xx naming the parameter, or werkzeug's 308 redirect of an empty "
                   "path segment; the property fails on any 5xx:"), "", "| route status reason | count |", "|---|---:|"]
        lines += _rejection_table(rejected)[2:]
        lines.append("")
    lines += atheris_section(logs)
    return "\n".join(lines)


def ensure_doc() -> None:
    if not DOC.exists():
        DOC.write_text(INTRO, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-s", type=float, default=180, help="InfluxDB outage length (several minutes)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--fuzz-logs", type=Path, help="write only the fuzz-run section, from this run's logs")
    parser.add_argument("--out", type=Path, help="keep the figures (JSON lines) here")
    args = parser.parse_args()
    if args.fuzz_logs:
        text = fuzz_section(args.fuzz_logs)
        print(text)
        if not args.no_write:
            ensure_doc()
            write_section("Fuzz run", text, DOC)
        return
    out = args.out or Path(tempfile.mkstemp(prefix="reliability-", suffix=".jsonl")[1])
    out.write_text("")
    rc, seconds = run_faults(args.outage_s, out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    text = faults_section(rows, rc, seconds, "python bench/reliability.py " + " ".join(sys.argv[1:]), args.outage_s)
    print(text)
    if not args.no_write:
        ensure_doc()
        write_section("Faults survived", text, DOC)


if __name__ == "__main__":
    main()
