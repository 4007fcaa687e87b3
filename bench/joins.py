#!/usr/bin/env python3
"""A/B of two `apiary` builds on joins that work long per probe batch (a nested loop whose
filter rejects every pair or passes some, a hash join on four keys whose filter rejects every
pair, a plain 3 M x 3 M hash join, a cross join): `--bees 1`, one warm-up and the median of 5
per query through ADBC, each build started in turn twice (alternating order), with the load
average. What pacing a join's probe side (`runtime/src/engine/yielding.rs`) costs.

    ~/.cache/apiary/venv/bin/python bench/joins.py OLD_BINARY NEW_BINARY
"""
import os, statistics, sys, tempfile, time

import adbc_driver_flightsql.dbapi as flightsql

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from conftest import ApiaryServer  # noqa: E402

QUERIES = {
    "nested loop, none pass": "SELECT count(*) FROM generate_series(1, 20000) a "
    "JOIN generate_series(1, 20000) b ON a.value + b.value < 0",
    "nested loop, some pass": "SELECT count(*) FROM generate_series(1, 20000) a "
    "JOIN generate_series(1, 20000) b ON a.value * 3 < b.value",
    "hash, 4 keys, none pass": "SELECT count(*) FROM generate_series(1, 20000) a "
    "JOIN generate_series(1, 20000) b ON a.value % 4 = b.value % 4 AND a.value + b.value < 0",
    "hash, 3 M unique keys": "SELECT count(*), sum(b.value) FROM generate_series(1, 3000000) a "
    "JOIN generate_series(1, 3000000) b ON a.value = b.value",
    "cross 3,000 x 3,000": "SELECT count(*) FROM generate_series(1, 3000) a "
    "CROSS JOIN generate_series(1, 3000) b",
}


def run(binary):
    os.environ["APIARY_BIN"] = binary
    server = ApiaryServer(tempfile.mkdtemp() + "/root", args=["--bees", "1"])
    out = {}
    try:
        with flightsql.connect(server.uri, autocommit=True) as conn:
            for name, sql in QUERIES.items():
                times = []
                for _ in range(6):
                    t = time.perf_counter()
                    with conn.cursor() as cur:
                        cur.execute(sql)
                        cur.fetchall()
                    times.append(time.perf_counter() - t)
                out[name] = statistics.median(times[1:])
    finally:
        server.stop()
    return out


def main():
    old, new = sys.argv[1], sys.argv[2]
    runs = {"old": [], "new": []}
    for order in ((("old", old), ("new", new)), (("new", new), ("old", old))):
        for tag, binary in order:
            runs[tag].append(run(binary))
    print(f"load average {os.getloadavg()[0]:.2f}")
    for name in QUERIES:
        o = statistics.median(r[name] for r in runs["old"])
        n = statistics.median(r[name] for r in runs["new"])
        each = lambda tag: [round(r[name] * 1000) for r in runs[tag]]  # noqa: E731
        print(f"{name:26s} old {o * 1000:8.1f} ms  new {n * 1000:8.1f} ms  new/old {n / o:.2f}"
              f"   runs old {each('old')} new {each('new')}")


if __name__ == "__main__":
    main()
