"""
Bulk database writes: many concurrent producers, one ``executemany`` transaction per batch.

Every producer awaits ``scope.submit(row)`` and gets back the id of its row. The batch
function is a plain (sync) function, so batchscope runs it in a worker thread, never on
the event loop: it opens one transaction, assigns the ids, inserts the whole batch with
one ``executemany`` and commits. A row that fails validation gets a ``ValueError`` at
its position and fails alone; the rest of its batch is written. A database error raises,
the transaction rolls back, and every producer of that batch gets the error.

The program writes the same rows twice into a fresh database file, once with one
transaction per row and once through batchscope, and prints both throughputs. Commits
are what cost (each one waits for the disk), so batching pays many times over.

Run it (only batchscope needed; ``trio`` for Trio)::

    python examples/sqlite_bulk_write.py
    python examples/sqlite_bulk_write.py --rows 5000 --producers 200 --backend trio
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import attrs

import batchscope as bs

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    source  TEXT NOT NULL,
    payload TEXT NOT NULL
)
"""


@attrs.frozen
class Row:
    """One row to insert."""

    source: str
    payload: str


def connect(path: Path) -> sqlite3.Connection:
    """
    Open *path* for writing from worker threads, one at a time.

    ``isolation_level=None`` leaves transactions to us (explicit ``BEGIN``/``COMMIT``);
    ``check_same_thread=False`` lets successive worker threads use the connection, which
    is safe because only one batch runs at a time (``max_concurrent_batches=1``).
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(SCHEMA)
    return connection


@attrs.define
class BulkWriter:
    """The batch function: one transaction and one ``executemany`` per batch."""

    connection: sqlite3.Connection
    #: Size of every batch written, in order.
    batches: list[int] = attrs.Factory(list)

    def __call__(self, rows: list[Row]) -> list[int | Exception]:
        valid = [row for row in rows if row.source]
        db = self.connection
        # BEGIN IMMEDIATE takes the write lock at once, so nobody else can insert between
        # reading the largest id and inserting: the ids we assign are the ids written.
        db.execute("BEGIN IMMEDIATE")
        try:
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
            ids = range(last + 1, last + 1 + len(valid))
            db.executemany(
                "INSERT INTO events (id, source, payload) VALUES (?, ?, ?)",
                [(i, row.source, row.payload) for i, row in zip(ids, valid, strict=True)],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.batches.append(len(rows))
        # One result per row, in order: its id, or the exception that fails it alone.
        next_id = iter(ids)
        return [
            next(next_id) if row.source else ValueError(f"row {row!r} has no source")
            for row in rows
        ]


def insert_one(connection: sqlite3.Connection, row: Row) -> int:
    """The unbatched way: one INSERT, which is one transaction (we are in autocommit)."""
    if not row.source:
        raise ValueError(f"row {row!r} has no source")
    cursor = connection.execute(
        "INSERT INTO events (source, payload) VALUES (?, ?)", (row.source, row.payload)
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def make_rows(count: int) -> list[Row]:
    """*count* rows; every 100th one is invalid (no source)."""
    return [Row("" if i % 100 == 99 else f"sensor-{i % 7}", f"reading {i}") for i in range(count)]


@attrs.frozen
class RunResult:
    """What one way of writing achieved."""

    seconds: float
    ids: dict[int, int]  # row index -> id
    failed: int


async def produce(
    rows: list[Row], producers: int, write_one: Callable[[Row], Awaitable[int]]
) -> RunResult:
    """*producers* concurrent tasks write *rows* through *write_one* (an async callable)."""
    ids: dict[int, int] = {}
    failed = 0

    async def producer(first: int) -> None:
        nonlocal failed
        for index in range(first, len(rows), producers):
            try:
                ids[index] = await write_one(rows[index])
            except ValueError:  # noqa: PERF203 - each row's own outcome
                failed += 1

    started = anyio.current_time()
    async with anyio.create_task_group() as task_group:
        for first in range(min(producers, len(rows))):
            task_group.start_soon(producer, first)
    return RunResult(anyio.current_time() - started, ids, failed)


async def write_unbatched(path: Path, rows: list[Row], producers: int) -> RunResult:
    """One worker-thread call and one transaction per row."""
    connection = connect(path)
    one_at_a_time = anyio.CapacityLimiter(1)  # one writer, as SQLite wants
    try:

        async def write_one(row: Row) -> int:
            return await anyio.to_thread.run_sync(
                insert_one, connection, row, limiter=one_at_a_time
            )

        return await produce(rows, producers, write_one)
    finally:
        connection.close()


async def write_batched(
    path: Path, rows: list[Row], producers: int
) -> tuple[RunResult, bs.BatchStatistics]:
    """Every row through ``scope.submit``; one transaction per batch."""
    connection = connect(path)
    try:
        async with bs.BatchScope(
            BulkWriter(connection), max_batch_size=256, max_wait=0.002
        ) as scope:
            result = await produce(rows, producers, scope.submit)
        return result, scope.statistics()
    finally:
        connection.close()


async def demo(rows: int, producers: int, directory: Path) -> None:
    data = make_rows(rows)
    unbatched = await write_unbatched(directory / "unbatched.sqlite3", data, producers)
    batched, stats = await write_batched(directory / "batched.sqlite3", data, producers)
    for name, result in [("one transaction per row", unbatched), ("batchscope", batched)]:
        print(
            f"{name:>24}: {len(result.ids)} rows written, {result.failed} refused, "
            f"in {result.seconds:.2f} s ({len(result.ids) / result.seconds:,.0f} rows/s)"
        )
    print(
        f"{'':>24}  {stats.batches} batches, mean size {stats.mean_batch_size:.1f}; "
        f"{unbatched.seconds / batched.seconds:.0f}x the throughput"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--producers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(partial(demo, args.rows, args.producers, Path(directory)), backend=args.backend)


if __name__ == "__main__":
    main()
