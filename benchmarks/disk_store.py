"""Which store holds a table's rows on disk: the hash file of ps/sparse/disk_rows.py against SQLite.

    python benchmarks/disk_store.py [--rows 1000000] [--dim 16]

The disk tier's work, as a table beyond memory gives it: rows of ``dim``
weights and ``dim`` Adagrad sums (float32), a last-seen version and an int64
id drawn from the whole int64 space, written in batches of 16,384 (an
eviction) and read back in batches of 4,096 ids, half of them written before
and half never (a push's rows not in memory: some on disk, some new). Each
store does the same batches; the script prints rows/s for writes, for reads,
and the bytes per row the store's file holds on disk.

SQLite (Python's sqlite3, so nothing to install): one table keyed by the id
(``INTEGER PRIMARY KEY``, the B-tree's own key), the record a BLOB, WAL
journal, ``synchronous=OFF`` (the tier is rebuilt from a checkpoint after a
crash anyway, so neither store syncs). Reads are ``SELECT ... WHERE id IN``
of up to 500 ids at a time.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

import numpy as np

from rayps.ps.sparse.disk_rows import DiskRows

WRITE_BATCH, READ_BATCH, SQL_IN = 16_384, 4_096, 500


def batches(rows: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 2**63 - 1, rows + rows // 10))[:rows]
    rng.shuffle(ids)
    records = rng.normal(size=(rows, 2 * dim)).astype(np.float32)
    writes = [(ids[lo:lo + WRITE_BATCH], records[lo:lo + WRITE_BATCH]) for lo in range(0, rows, WRITE_BATCH)]
    reads = []
    for _ in range(max(1, rows // READ_BATCH // 4)):
        held = rng.choice(ids, READ_BATCH // 2, replace=False)
        fresh = rng.integers(0, 2**63 - 1, READ_BATCH // 2)
        reads.append(np.unique(np.concatenate([held, fresh])))
    return writes, reads


def hash_file(writes, reads, dim: int, where: str) -> dict:
    disk = DiskRows(2 * dim, [], directory=where)
    began = time.perf_counter()
    for ids, records in writes:
        rows = np.empty(len(ids), disk.row_dtype)
        rows["id"], rows["last_seen"], rows["record"] = ids, 1, records
        disk.write(rows)
    wrote = time.perf_counter() - began
    began = time.perf_counter()
    found = 0
    for ids in reads:
        at = disk.find(ids)
        found += len(disk.read(at[at >= 0]))
    read = time.perf_counter() - began
    return {"write_s": wrote, "read_s": read, "found": found, "bytes": disk.nbytes, "rows": disk.count}


def sqlite(writes, reads, dim: int, where: str) -> dict:
    path = os.path.join(where, "rows.sqlite")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, last_seen INTEGER, record BLOB)")
    began = time.perf_counter()
    for ids, records in writes:
        db.executemany("INSERT OR REPLACE INTO rows VALUES (?, 1, ?)",
                       zip(ids.tolist(), (r.tobytes() for r in records)))
        db.commit()
    wrote = time.perf_counter() - began
    began = time.perf_counter()
    found = 0
    for ids in reads:
        for lo in range(0, len(ids), SQL_IN):
            part = ids[lo:lo + SQL_IN].tolist()
            got = db.execute(f"SELECT id, last_seen, record FROM rows WHERE id IN ({','.join('?' * len(part))})",
                             part).fetchall()
            if got:
                np.frombuffer(b"".join(r[2] for r in got), np.float32)
            found += len(got)
    read = time.perf_counter() - began
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = sum(os.path.getsize(os.path.join(where, f)) for f in os.listdir(where) if f.startswith("rows.sqlite"))
    return {"write_s": wrote, "read_s": read, "found": found, "bytes": size, "rows": len(np.concatenate([i for i, _ in writes]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args()
    writes, reads = batches(args.rows, args.dim)
    asked = sum(len(r) for r in reads)
    print(f"{args.rows:,} rows of dim {args.dim} (weights and Adagrad sums: {8 * args.dim + 16} bytes of data"
          f" per row); writes in batches of {WRITE_BATCH:,}, {len(reads)} reads of about {READ_BATCH:,} ids")
    print("| store | write rows/s | read rows/s (ids asked) | rows found | bytes per row on disk |")
    print("|---|---|---|---|---|")
    for name, store in (("hash file (disk_rows.py)", hash_file), ("SQLite, id primary key", sqlite)):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as where:
            r = store(writes, reads, args.dim, where)
        print(f"| {name} | {args.rows / r['write_s']:,.0f} | {asked / r['read_s']:,.0f} | {r['found']:,} |"
              f" {r['bytes'] / r['rows']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
