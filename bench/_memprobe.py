"""Where a process's memory sits, sampled from inside it: for the soak's `--probe` (bench/soak.py).

RSS alone says memory grew, not who holds it. A thread of the collector process appends a JSON
line to a file every `every` seconds with:

- `rss_mb` and the mappings of /proc/self/smaps summed by kind: glibc's main heap (`[heap]`),
  unnamed anonymous mappings (`anon_mb`: glibc's thread arenas and mmapped chunks, pymalloc's
  arenas, and the native allocators of Polars and DuckDB all land there), file-backed;
- glibc's own account (`mallinfo2`: bytes in use and free in its arenas, bytes mmapped), so the
  anonymous mappings that are not glibc's can be told apart;
- Python's: blocks allocated by pymalloc (`sys.getallocatedblocks`), objects tracked by the
  garbage collector and the most numerous types (every `types_every` samples: the walk is slow);
- DuckDB's own account (`duckdb_memory()`: buffer-managed bytes by kind) for the historian found
  among the process's objects.

Started by `python bench/_memprobe.py OUT EVERY -- <controltower.cli arguments>`: the probe
thread, then the CLI in the same process.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import sys
import threading
import time
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> dict:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    mib = 1 << 20
    return {"glibc_arena_mb": round(info.arena / mib, 1), "glibc_in_use_mb": round(info.uordblks / mib, 1),
            "glibc_free_mb": round(info.fordblks / mib, 1), "glibc_mmapped_mb": round(info.hblkhd / mib, 1)}


def _smaps() -> dict:
    kinds: collections.Counter = collections.Counter()
    anon_regions = 0
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            name = head[5] if len(head) > 5 else ""
            anon_regions += not name
        elif head[0] == "Rss:":
            kb = int(head[1])
            kind = ("heap" if name == "[heap]" else "anon" if not name else "stack" if name.startswith("[stack")
                    else "other" if name.startswith("[") else "file")
            kinds[kind] += kb
    return {f"{kind}_mb": round(kb / 1024, 1) for kind, kb in sorted(kinds.items())} | {"anon_regions": anon_regions}


def _duckdb_memory() -> dict:
    from collector.sinks.duckdb import DuckDbHistorian

    for obj in gc.get_objects():
        if isinstance(obj, DuckDbHistorian) and not obj._closed:
            rows = obj._con.cursor().execute(
                "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0").fetchall()
            return {f"duckdb_{tag.lower()}_mb": round(used / (1 << 20), 1) for tag, used in rows}
    return {}


def _top_types(limit: int = 25) -> dict:
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return dict(counts.most_common(limit))


def sample(with_types: bool) -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    row = {"t": round(time.time(), 1), "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
           **_smaps(), **_mallinfo2(), "pymalloc_blocks": sys.getallocatedblocks(),
           "gc_objects": len(gc.get_objects()), "threads": threading.active_count()}
    try:
        row.update(_duckdb_memory())
    except Exception as exc:  # noqa: BLE001 (a probe must never stop the process it watches)
        row["duckdb_error"] = repr(exc)
    if with_types:
        row["types"] = _top_types()
    return row


def start(out: Path, every: float, types_every: int = 4) -> None:
    def loop() -> None:
        n = 0
        with out.open("a") as f:
            while True:
                time.sleep(every)
                f.write(json.dumps(sample(n % types_every == 0)) + "\n")
                f.flush()
                n += 1

    threading.Thread(target=loop, name="memprobe", daemon=True).start()


if __name__ == "__main__":
    out, every, dashes, *cli_args = sys.argv[1:]
    assert dashes == "--", "usage: _memprobe.py OUT EVERY -- <controltower.cli arguments>"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    start(Path(out), float(every))
    from controltower.cli import main

    sys.exit(main(cli_args))
