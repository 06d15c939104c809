"""How fast the review page's questions are on a large frame store, and whether each one uses an index.

Fills a fresh store with ``--frames`` judged frames (4 lines x 4 cameras over 30 days, ~90 % OK, 5 %
labelled; rows only, as a plant's store mostly is), then runs every ``query`` and ``count`` the review
page asks (by line, camera, verdict, time, label; newest first and least sure first) ``--runs`` times.
For each it records the median time and the database's own plan (SQLite ``EXPLAIN QUERY PLAN``,
PostgreSQL ``EXPLAIN``) of the exact statement the store sent, and flags plans that read the whole table.
Then it drops the indexes schema version 2 added for the review page and asks again, and it writes
``--write-frames`` frames into two stores, with and without those indexes, batch by batch in turn (so a
busy machine slows both alike), to show what the indexes cost the recorder.

    python -m benchmarks.store_queries                                   # SQLite, 100,000 frames
    python -m benchmarks.store_queries --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

A PostgreSQL database must be empty (the store creates its tables). Results go to
``benchmarks/results/store_queries_<database>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from benchmarks.machine import machine_info, save_result
from inspectline.config import StoreConfig
from inspectline.store import FrameRecord, FrameStore, LabelUpdate

END = datetime(2026, 11, 30, tzinfo=timezone.utc)
LINES = [f"line-{n}" for n in range(1, 5)]
CAMERAS = [f"cam-{n}" for n in range(1, 5)]
PAGE = 50
# The indexes schema version 2 added for the review page (schema.py); the rest were there before.
REVIEW_INDEXES = (
    "ix_frames_verdict_received",
    "ix_frames_line_verdict_received",
    "ix_frames_uncertainty",
    "ix_frames_line_label_uncertainty",
)


def batches(n: int, seed: int = 0, size: int = 2000) -> list[list[FrameRecord]]:
    """``n`` judged frames in recorder-sized batches: mostly confident OKs, some defects, a few unsure."""
    rng = random.Random(seed)
    out: list[list[FrameRecord]] = []
    for i in range(n):
        if i % size == 0:
            out.append([])
        p = rng.betavariate(0.4, 4.0) if rng.random() < 0.92 else rng.betavariate(4.0, 0.6)
        verdict = "UNSURE" if abs(p - 0.5) < 0.05 else ("DEFECTIVE" if p >= 0.5 else "OK")
        out[-1].append(
            FrameRecord(
                camera_id=rng.choice(CAMERAS),
                frame_id=f"f{i:08d}",
                line_id=rng.choice(LINES),
                part_id=None,
                captured_at=None,
                received_at=END - timedelta(seconds=(n - i) * 30 * 86400 / n),
                verdict=verdict,
                defect_probability=p,
                confidence=max(p, 1 - p),
                threshold=0.5,
                model_version="v0001" if i < n // 2 else "v0002",
                views={"identity": p, "hflip": p},
                content_sha256=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
            )
        )
    return out


def label_some(store: FrameStore, share: float = 0.05, seed: int = 0) -> None:
    rng = random.Random(seed)
    ids = [f.id for f in store.iter_query(order="oldest")]
    picked = rng.sample(ids, int(len(ids) * share))
    store.set_labels([LabelUpdate(i, rng.choice(["ok", "defective"]), "bench") for i in picked])


def drop_review_indexes(store: FrameStore) -> None:
    with store._db.write() as conn:
        for name in REVIEW_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")


def write_rates(open_store, n: int) -> tuple[float, float]:
    """Frames/s written with and without the review indexes, the two stores taking turns batch by batch."""
    with_indexes, without = open_store("with"), open_store("without")
    drop_review_indexes(without)
    spent = {"with": 0.0, "without": 0.0}
    for batch in batches(n, seed=1):
        for name, store in (("with", with_indexes), ("without", without)):
            started = time.perf_counter()
            store.add_frames(batch)
            spent[name] += time.perf_counter() - started
    with_indexes.close()
    without.close()
    return n / spent["with"], n / spent["without"]


def cases() -> list[tuple[str, dict]]:
    """(name, filters and order) of every question the review page asks; ``count`` is asked with the filters."""
    day = END - timedelta(days=1)
    line, camera = LINES[1], CAMERAS[2]
    return [
        ("all, newest", {"order": "newest"}),
        ("all, least sure", {"order": "uncertainty"}),
        ("unlabelled, least sure (review queue)", {"labelled": False}),
        ("line, unlabelled, least sure", {"line": line, "labelled": False}),
        ("line, newest", {"line": line, "order": "newest"}),
        ("line+camera, newest", {"line": line, "camera": camera, "order": "newest"}),
        ("line+camera, least sure", {"line": line, "camera": camera}),
        ("camera (any line), newest", {"camera": camera, "order": "newest"}),
        ("DEFECTIVE, newest", {"verdict": "DEFECTIVE", "order": "newest"}),
        ("line, DEFECTIVE, newest", {"line": line, "verdict": "DEFECTIVE", "order": "newest"}),
        ("UNSURE, unlabelled, least sure", {"verdict": "UNSURE", "labelled": False}),
        ("line, last 24 h, least sure", {"line": line, "since": day}),
        ("last 24 h, newest", {"since": day, "order": "newest"}),
        (
            "line, camera, UNSURE, unlabelled, least sure",
            {"line": line, "camera": camera, "verdict": "UNSURE", "labelled": False},
        ),
        ("labelled, oldest (retrain)", {"labelled": True, "order": "oldest"}),
    ]


class StatementLog:
    """The last SQL statement (and its parameters) the store's engine sent to the database."""

    def __init__(self, engine: sa.Engine):
        self.statement, self.parameters = "", None
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn, _cursor, statement, parameters, _context, _executemany) -> None:
        self.statement, self.parameters = statement, parameters


def plan(engine: sa.Engine, statement: str, parameters) -> list[str]:
    """The database's plan for exactly this statement."""
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return [row[3] for row in cursor.fetchall()]
        cursor.execute(f"EXPLAIN {statement}", parameters)
        return [row[0] for row in cursor.fetchall()]


def reads_whole_table(lines: list[str]) -> bool:
    """A plan that walks every row of ``frames`` (SQLite ``SCAN frames`` without an index, PostgreSQL Seq Scan)."""
    return any(
        (line.strip().startswith("SCAN frames") and "INDEX" not in line) or "Seq Scan on frames" in line
        for line in lines
    )


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(store: FrameStore, engine: sa.Engine, runs: int) -> list[dict]:
    """Every case's median query and count time, with the plans of the statements the store sent."""
    sent = StatementLog(engine)
    rows = []
    for name, spec in cases():
        filters = {k: v for k, v in spec.items() if k != "order"}
        query_s = timed(lambda spec=spec: store.query(**spec, limit=PAGE), runs)
        query_plan = plan(engine, sent.statement, sent.parameters)
        count_s = timed(lambda filters=filters: store.count(**filters), runs)
        count_plan = plan(engine, sent.statement, sent.parameters)
        rows.append(
            {
                "case": name,
                "matching": store.count(**filters),
                "query_ms": round(query_s * 1000, 2),
                "count_ms": round(count_s * 1000, 2),
                "query_full_scan": reads_whole_table(query_plan),
                "count_full_scan": reads_whole_table(count_plan),
                "query_plan": query_plan,
                "count_plan": count_plan,
            }
        )
    event.remove(engine, "before_cursor_execute", sent._record)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--write-frames", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", help="an empty database; default: SQLite in a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:

        def open_store(name: str) -> FrameStore:
            url = f"sqlite:///{Path(tmp) / name}.db"
            if args.database_url:  # one PostgreSQL schema per store
                with sa.create_engine(args.database_url).begin() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS bench_{name} CASCADE; CREATE SCHEMA bench_{name}")
                sep = "&" if "?" in args.database_url else "?"
                url = f"{args.database_url}{sep}options=-csearch_path%3Dbench_{name}"
            return FrameStore(StoreConfig(database_url=url, storage_url=str(Path(tmp) / "images")))

        write_with, write_without = write_rates(open_store, args.write_frames)
        store = open_store("frames")
        engine = store._db.engine  # the benchmark watches the statements the store itself sends
        for batch in batches(args.frames):
            store.add_frames(batch)
        label_some(store)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")  # as autovacuum would after a bulk load
        indexed = measure(store, engine, args.runs)
        deep_s = timed(lambda: store.query(order="newest", limit=PAGE, offset=args.frames // 2), args.runs)
        drop_review_indexes(store)
        before = measure(store, engine, args.runs)
        store.close()

    for row, old in zip(indexed, before, strict=True):
        row["without_review_indexes"] = {
            k: old[k]
            for k in ("query_ms", "count_ms", "query_full_scan", "count_full_scan", "query_plan", "count_plan")
        }
    result = {
        "benchmark": "store_queries",
        "database": engine.dialect.name,
        "frames": args.frames,
        "page": PAGE,
        "runs": args.runs,
        "review_indexes": list(REVIEW_INDEXES),
        "write_frames": args.write_frames,
        "write_frames_per_s": {"with_review_indexes": round(write_with), "without": round(write_without)},
        "deep_page_ms": round(deep_s * 1000, 2),
        "cases": indexed,
        "machine": machine_info(),
    }
    path = save_result(f"store_queries_{engine.dialect.name}", result)
    print(
        f"{args.frames:,} frames on {engine.dialect.name}, median of {args.runs}; ms with / without the review indexes"
    )
    print(f"{'case':46} {'matching':>8} {'query ms':>15} {'count ms':>17}  full scan now (query/count)")
    for r, old in zip(indexed, before, strict=True):
        scans = f"{'YES' if r['query_full_scan'] else 'no'}/{'YES' if r['count_full_scan'] else 'no'}"
        query = f"{r['query_ms']:.1f} / {old['query_ms']:.1f}"
        count = f"{r['count_ms']:.1f} / {old['count_ms']:.1f}"
        print(f"{r['case']:46} {r['matching']:>8,} {query:>15} {count:>17}  {scans}")
    print(f"{'newest page at offset ' + format(args.frames // 2, ','):46} {'':>8} {deep_s * 1000:>15.1f}")
    print(
        f"writing {args.write_frames:,} frames: {write_with:,.0f} frames/s with the review indexes, "
        f"{write_without:,.0f} without ({write_with / write_without:.2f}x)"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
