#!/usr/bin/env python3
"""A/B of two `apiary` builds on DDL of one name used again and again: rounds of CREATE TABLE,
three INSERTs and DROP TABLE through ADBC, on a fresh local root per build; median CREATE and
DROP latency, each build run in turn twice (alternating order), with the load average.

    ~/.cache/apiary/venv/bin/python bench/ddl.py OLD_BINARY NEW_BINARY [ROUNDS]   # default 60
"""
import os, statistics, subprocess, sys, tempfile, time

import adbc_driver_flightsql.dbapi as flightsql

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from conftest import ApiaryServer  # noqa: E402


def rounds(binary, n):
    os.environ["APIARY_BIN"] = binary
    s = ApiaryServer(tempfile.mkdtemp() + "/root", args=["--bees", "1"])
    create, drop = [], []
    try:
        with flightsql.connect(s.uri, autocommit=True) as conn, conn.cursor() as cur:
            for _ in range(n):
                t = time.perf_counter()
                cur.execute("CREATE TABLE t (k INT, v VARCHAR)")
                create.append(time.perf_counter() - t)
                for j in range(3):
                    cur.execute(f"INSERT INTO t VALUES ({j}, 'x')")
                t = time.perf_counter()
                cur.execute("DROP TABLE t")
                drop.append(time.perf_counter() - t)
    finally:
        s.stop()
    return statistics.median(create) * 1e3, statistics.median(drop) * 1e3


def main():
    old, new = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    got = {"old": [], "new": []}
    for _ in range(2):
        for name, binary in (("old", old), ("new", new)):
            got[name].append(rounds(binary, n))
    for name in ("old", "new"):
        runs = ", ".join(f"CREATE {c:.1f} ms / DROP {d:.1f} ms" for c, d in got[name])
        print(f"{name}: {runs}")
    ratio = lambda i: statistics.median(x[i] for x in got["new"]) / statistics.median(x[i] for x in got["old"])
    print(f"new/old: CREATE {ratio(0):.2f}, DROP {ratio(1):.2f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
