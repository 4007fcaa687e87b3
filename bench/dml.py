#!/usr/bin/env python3
"""Cost of row-level changes against rewriting the frame: DELETE and UPDATE of about 1 % of
TPC-H lineitem, and the same change written as a full rewrite (CREATE TABLE AS SELECT of the
rows that stay), in one run on one server. Median of --runs; each run touches other rows.

    bench/dml.py --sf 1 --runs 3 [--bin target/release/apiary]

Prints a table and writes bench/results/dml-sf<sf>.json.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import tpch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", type=float, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.environ.get("APIARY_BIN"))
    ap.add_argument("--cell-size", default=None, help="server --cell-target-size (e.g. 16MiB)")
    args = ap.parse_args()
    binary = args.bin or str(
        pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/apiary/target")) / "release/apiary"
    )
    data = tpch.generate(args.sf, BENCH / "data")
    noise = tpch.Noise()
    with tempfile.TemporaryDirectory() as root:
        extra = ["--cell-target-size", args.cell_size] if args.cell_size else []
        server, uri = tpch.start_apiary(binary, root, extra)
        noise.track(server.pid)
        try:
            with flightsql.connect(uri) as conn, conn.cursor() as cur:
                pf = pq.ParquetFile(data / "lineitem.parquet")
                schema = tpch.plain(next(pf.iter_batches(batch_size=1))).schema
                batches = (tpch.plain(b) for b in pf.iter_batches(batch_size=65536))
                cur.adbc_ingest("lineitem", pa.RecordBatchReader.from_batches(schema, batches), mode="create")
                cur.execute("SELECT count(*) FROM lineitem")
                total = cur.fetchall()[0][0]
                cur.execute("DESCRIBE lineitem")
                cells = [r for r in cur.fetchall() if r[0] == "Cells"]
                results = {"delete": [], "update": [], "range": [], "rewrite": []}
                touched = {"delete": 0, "update": 0, "range": 0}
                rewritten = {"delete": 0, "update": 0, "range": 0}
                step = (6_000_000 * args.sf) // 100
                for run in range(args.runs):
                    k = 7 + 10 * run
                    for kind, sql in (
                        # 1 % of the keys in one range: only the cells holding them are rewritten.
                        (
                            "range",
                            f"DELETE FROM lineitem WHERE l_orderkey > {int(step * (10 + run))} "
                            f"AND l_orderkey <= {int(step * (11 + run))}",
                        ),
                        ("delete", f"DELETE FROM lineitem WHERE l_orderkey % 100 = {k}"),
                        ("update", f"UPDATE lineitem SET l_comment = 'changed' WHERE l_orderkey % 100 = {k + 1}"),
                        (
                            "rewrite",
                            f"CREATE OR REPLACE TABLE lineitem_rw AS SELECT * FROM lineitem WHERE l_orderkey % 100 <> {k + 2}",
                        ),
                    ):
                        t = time.perf_counter()
                        cur.execute(sql)
                        results[kind].append(time.perf_counter() - t)
                        if kind in touched:
                            touched[kind] = cur.rowcount
                            cur.execute("DESCRIBE HISTORY lineitem LIMIT 1")
                            rewritten[kind] = cur.fetchall()[0][6]
        finally:
            server.stop()
    share = noise.share()
    med = {k: statistics.median(v) for k, v in results.items()}
    out = {
        "sf": args.sf,
        "rows": total,
        "cells": cells[0][1] if cells else None,
        "rows_deleted_per_run": touched["delete"],
        "rows_updated_per_run": touched["update"],
        "median_s": med,
        "delete_vs_rewrite": med["delete"] / med["rewrite"],
        "update_vs_rewrite": med["update"] / med["rewrite"],
        "range_delete_vs_rewrite": med["range"] / med["rewrite"],
        "rows_range_deleted_per_run": touched["range"],
        "cells_rewritten": rewritten,
        "cell_size": args.cell_size,
        "other_cpu_share": share,
        "runs": args.runs,
    }
    print(f"lineitem SF{args.sf:g}: {total} rows in {out['cells']} cell(s); other CPU {share:.1%}")
    print("| change | rows | cells rewritten | median | vs rewrite |")
    print("|---|---:|---:|---:|---:|")
    print(f"| DELETE ~1 % | {touched['delete']} | {rewritten['delete']} | {med['delete'] * 1000:.0f} ms | {out['delete_vs_rewrite']:.2f} |")
    print(f"| UPDATE ~1 % | {touched['update']} | {rewritten['update']} | {med['update'] * 1000:.0f} ms | {out['update_vs_rewrite']:.2f} |")
    print(f"| DELETE ~1 % as one key range | {touched['range']} | {rewritten['range']} | {med['range'] * 1000:.0f} ms | {out['range_delete_vs_rewrite']:.2f} |")
    print(f"| rewrite (CTAS of the rest) | {total} | all | {med['rewrite'] * 1000:.0f} ms | 1.00 |")
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    suffix = f"-cells{args.cell_size}" if args.cell_size else ""
    (results_dir / f"dml-sf{args.sf:g}{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
