"""What the gateway's repeated-id check costs per frame: the frame store's lookup of one frame id.

Every frame a camera posts with an id is looked up in the frame store (the authority on ids judged
before) unless the gateway's memory already knows it, one query per new frame: at the rates a line
posts, lookups hardly ever overlap, so grouping them buys nothing. What a lookup costs is then the
statement: ``FrameStore.find`` runs one prepared equality query with bound values, ``find_many`` a
tuple ``IN`` that SQLAlchemy renders anew on every call. Both run here as the gateway runs them (through
``StoreAccess``, in a worker thread, from an event loop), with ``--concurrency`` lookups in flight, each
for a new id (every tenth one stored before, as retries are), in alternating rounds so a busy machine
slows both alike. Per mode: this process's CPU time per id (every thread) and ids/s.

    python -m benchmarks.repeated_id_lookup                      # SQLite, 20,000 stored frames
    python -m benchmarks.repeated_id_lookup --concurrency 1 8

Results go to ``benchmarks/results/repeated_id_lookup.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_info, save_result
from benchmarks.store_queries import batches
from inspectline.config import StoreConfig
from inspectline.serving.judging import StoreAccess
from inspectline.store import FrameStore

MODES = {
    "find (prepared equality)": lambda access, key: access.find(key),
    "find_many of one id (tuple IN)": lambda access, key: access.call("find_many", [key]),
}


async def _round(access: StoreAccess, mode: str, keys: list[tuple[str, str, str]], concurrency: int) -> dict:
    """Look every key up with ``concurrency`` lookups in flight: CPU and wall time per id, and the hits."""
    lookup, todo, found = MODES[mode], iter(keys), 0

    async def post() -> None:
        nonlocal found
        for key in todo:
            hit = await lookup(access, key)  # awaited first: `found += await ...` would lose other posts' counts
            found += bool(hit)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(post() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_ms_per_id": 1000 * cpu / len(keys), "ids_per_s": len(keys) / wall, "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames in the store")
    parser.add_argument("--ids", type=int, default=2_000, help="ids looked up per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode, alternating")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = StoreConfig(database_url=f"sqlite:///{Path(tmp) / 'frames.db'}", storage_url=str(Path(tmp) / "images"))
        stored = [record for batch in batches(args.frames) for record in batch]
        store = FrameStore(config)
        for i in range(0, len(stored), 2000):
            store.add_frames(stored[i : i + 2000])
        access = StoreAccess(lambda: store)  # this store: one opened again would apply retention to the old rows
        rows = []
        for concurrency in args.concurrency:
            runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
            for r in range(args.rounds):
                # every tenth id was stored before (a retry), the rest are new; each round asks other ids
                keys = [
                    (f.line_id, f.camera_id, f.frame_id)
                    if i % 10 == 0 and (f := stored[(r * args.ids + i) % len(stored)])
                    else ("line-1", "cam-1", f"new-{concurrency}-{r}-{i}")
                    for i in range(args.ids)
                ]
                for mode in list(MODES) if r % 2 == 0 else reversed(MODES):
                    runs[mode].append(asyncio.run(_round(access, mode, keys, concurrency)))
            row: dict = {"concurrency": concurrency}
            for mode, results in runs.items():
                row[mode] = {k: statistics.median(x[k] for x in results) for k in ("cpu_ms_per_id", "ids_per_s")}
                if len({x["found"] for x in results}) != 1 or results[0]["found"] != args.ids // 10:
                    msg = (
                        f"{mode} found {[x['found'] for x in results]} stored ids, expected {args.ids // 10} per round"
                    )
                    raise RuntimeError(msg)
            first, second = MODES
            row["cpu_ratio"] = row[first]["cpu_ms_per_id"] / row[second]["cpu_ms_per_id"]
            rows.append(row)
        access.close()

    result = {
        "frames_in_store": args.frames,
        "ids_per_round": args.ids,
        "rounds": args.rounds,
        "database": "sqlite",
        "rows": rows,
        "machine": machine_info(),
    }
    out = save_result("repeated_id_lookup", result)
    print(f"\nRepeated-id lookup on SQLite ({args.frames} frames stored), {result['machine']['cpu']}")
    print("| lookups in flight | statement | CPU ms / id | ids/s |")
    print("|---|---|---|---|")
    for row in rows:
        for mode in MODES:
            print(
                f"| {row['concurrency']} | {mode} | {row[mode]['cpu_ms_per_id']:.3f} | {row[mode]['ids_per_s']:.0f} |"
            )
        print(f"| {row['concurrency']} | find ÷ find_many (CPU) | {row['cpu_ratio']:.2f} | |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
