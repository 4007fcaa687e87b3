"""TPC-H over Flight SQL: Apiary against DuckDB and DataFusion, side by side in one run.

Run it through `bench/run` (which builds the server and prepares the venv). Figures are ratios
measured in the same run on the same machine; absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import datafusion
import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]


# ---- processes ---------------------------------------------------------------------------------


class Proc:
    """A child process whose stderr is collected; waits for a line containing `ready`."""

    def __init__(self, cmd, ready: str, env=None, timeout=120):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.ready_line = None
        got = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                if self.ready_line is None and ready in line:
                    self.ready_line = line
                    got.set()
            got.set()

        threading.Thread(target=pump, daemon=True).start()
        if not got.wait(timeout) or self.ready_line is None:
            self.stop()
            raise RuntimeError(f"{cmd[0]} did not start:\n" + "".join(self.lines[-40:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss(self) -> int:
        return proc_status(self.pid, "VmHWM:")

    def reset_peak_rss(self):
        """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def proc_status(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def start_apiary(binary: str, storage: str, extra=()) -> tuple[Proc, str]:
    env = dict(os.environ, APIARY_LOG="info,buoyant_kernel=warn,deltalake_core=warn")
    p = Proc([binary, "serve", "--storage", storage, "--listen", "127.0.0.1:0", *extra], "listening on ", env=env)
    uri = p.ready_line.split("listening on ", 1)[1].split()[0]
    return p, uri


# ---- CPU noise ----------------------------------------------------------------------------------


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    """User + system CPU time of processes so far, with their waited-for children's if asked
    (0 for one that has gone)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (fields 14-17, after the comm field)
            ticks += sum(int(x) for x in fields[11:15 if children else 13])
        except FileNotFoundError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class Noise:
    """Share of CPU time used by processes other than ours during the run."""

    def __init__(self):
        self.pids: set[int] = {os.getpid()}
        self.start = self._snapshot()

    @staticmethod
    def _cpu():
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts), sum(parts) - idle

    def _ours(self):
        return round(cpu_seconds(list(self.pids), children=True) * os.sysconf("SC_CLK_TCK"))

    def _snapshot(self):
        total, busy = self._cpu()
        return total, busy, self._ours()

    def track(self, pid: int):
        self.pids.add(pid)

    def share(self) -> float:
        total0, busy0, ours0 = self.start
        total1, busy1, ours1 = self._snapshot()
        dt_total = max(total1 - total0, 1)
        other = (busy1 - busy0) - (ours1 - ours0)
        return max(0.0, other / dt_total)


# ---- data ---------------------------------------------------------------------------------------


def generate(sf: float, data_dir: pathlib.Path) -> pathlib.Path:
    out = data_dir / f"sf{sf:g}"
    if all((out / f"{t}.parquet").exists() for t in TABLES):
        return out
    tmp = data_dir / f"sf{sf:g}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = shutil.which("tpcgen-cli") or str(pathlib.Path(sys.executable).parent / "tpcgen-cli")
    t = time.time()
    subprocess.run([gen, "tpch", "parquet", "-s", f"{sf:g}", "--output-dir", str(tmp)], check=True)
    print(f"generated TPC-H SF{sf:g} in {time.time() - t:.1f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """View types as their plain forms (what every client can send)."""
    fields = []
    for f in batch.schema:
        t = f.type
        if t == pa.string_view():
            t = pa.string()
        elif t == pa.binary_view():
            t = pa.binary()
        fields.append(pa.field(f.name, t, f.nullable))
    return batch.cast(pa.schema(fields))


# How the bench lays out Apiary's frames: the date columns TPC-H filters ranges of. DuckDB and
# DataFusion read the generated Parquet files as they are (rows in key order).
CLUSTER = {"lineitem": "l_shipdate", "orders": "o_orderdate"}


def sql_type(t: pa.DataType) -> str:
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    names = {pa.int32(): "INT", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.date32(): "DATE", pa.string(): "VARCHAR"}
    return names[t]


def ingest(uri: str, data: pathlib.Path, cluster: bool = True) -> dict:
    """Bulk-ingest every table; with `cluster`, the tables in CLUSTER are created first with
    `CREATE TABLE … CLUSTER BY (key)` and ingested into (append)."""
    rows = 0
    nbytes = 0
    t0 = time.time()
    kwargs = {adbc_driver_flightsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value: str(256 * 1024 * 1024)}
    with flightsql.connect(uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        for table in TABLES:
            pf = pq.ParquetFile(data / f"{table}.parquet")
            schema = plain(next(pf.iter_batches(batch_size=1))).schema

            def batches(pf=pf):
                nonlocal rows, nbytes
                for b in pf.iter_batches(batch_size=65536):
                    b = plain(b)
                    rows += b.num_rows
                    nbytes += b.nbytes
                    yield b

            mode = "create"
            if cluster and table in CLUSTER:
                columns = ", ".join(f"{f.name} {sql_type(f.type)}" for f in schema)
                cur.execute(f"CREATE TABLE {table} ({columns}) CLUSTER BY ({CLUSTER[table]})")
                mode = "append"
            cur.adbc_ingest(table, pa.RecordBatchReader.from_batches(schema, batches()), mode=mode)
    secs = time.time() - t0
    return {"rows": rows, "bytes": nbytes, "seconds": secs, "rows_per_s": rows / secs, "mb_per_s": nbytes / secs / 1e6}


# ---- engines ------------------------------------------------------------------------------------


def queries() -> list[tuple[str, str]]:
    return [(p.stem, p.read_text()) for p in sorted((BENCH / "queries").glob("q*.sql"))]


class Apiary:
    name = "apiary"

    def __init__(self, uri: str):
        kwargs = {adbc_driver_flightsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value: str(256 * 1024 * 1024)}
        self.conn = flightsql.connect(uri, db_kwargs=kwargs)

    def run(self, sql: str) -> pa.Table:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table()

    def close(self):
        self.conn.close()


class DuckDB:
    name = "duckdb"

    def __init__(self, data: pathlib.Path):
        self.con = duckdb.connect()
        for t in TABLES:
            self.con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data / (t + '.parquet')}')")

    def run(self, sql: str) -> pa.Table:
        return self.con.execute(sql).to_arrow_table()

    def close(self):
        self.con.close()


class DataFusion:
    name = "datafusion"

    def __init__(self, data: pathlib.Path):
        self.ctx = datafusion.SessionContext()
        for t in TABLES:
            self.ctx.register_parquet(t, str(data / f"{t}.parquet"))

    def run(self, sql: str) -> pa.Table:
        return self.ctx.sql(sql).to_arrow_table()

    def close(self):
        pass


def timed(engine, sql: str, runs: int) -> tuple[float, pa.Table]:
    engine.run(sql)  # warm
    times = []
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        result = engine.run(sql)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


# ---- answers ------------------------------------------------------------------------------------


def norm(v):
    if v is None:
        return None
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, str):
        return v.rstrip()
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    return v


def close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def rows_of(t: pa.Table) -> list[tuple]:
    cols = [[norm(v) for v in c.to_pylist()] for c in t.columns]
    return list(zip(*cols)) if cols else []


def same_answer(a: pa.Table, b: pa.Table) -> tuple[bool, str]:
    if a.num_columns != b.num_columns:
        return False, f"{a.num_columns} columns vs {b.num_columns}"
    if a.num_rows > 100_000 or b.num_rows > 100_000:
        # Big results (plain scans) hold no computed floats: compared exactly, sorted in Arrow.
        if a.num_rows != b.num_rows:
            return False, f"{a.num_rows} rows vs {b.num_rows}"
        b = b.rename_columns(a.column_names)
        keys = [(c, "ascending") for c in a.column_names]
        same = a.sort_by(keys).combine_chunks().equals(b.cast(a.schema).sort_by(keys).combine_chunks())
        return (True, "") if same else (False, "rows differ")
    ra, rb = rows_of(a), rows_of(b)
    if len(ra) != len(rb):
        return False, f"{len(ra)} rows vs {len(rb)}"

    def equal(x, y):
        return all(all(close(p, q) for p, q in zip(r, s)) for r, s in zip(x, y))

    if equal(ra, rb):
        return True, ""
    # Ties in ORDER BY may come back in another order: compare as multisets.
    key = lambda r: tuple((0, round(v, 4)) if isinstance(v, float) else (1, str(v)) for v in r)  # noqa: E731
    if equal(sorted(ra, key=key), sorted(rb, key=key)):
        return True, ""
    for r, s in zip(ra, rb):
        if not all(close(p, q) for p, q in zip(r, s)):
            return False, f"first difference: {r} vs {s}"
    return False, "rows differ"


# ---- DoGet throughput ---------------------------------------------------------------------------

CEILING = r'''
import sys, pyarrow as pa, pyarrow.flight as fl, pyarrow.parquet as pq
sys.path.insert(0, sys.argv[2])
from tpch import plain
t = pq.read_table(sys.argv[1])
batches = [plain(b) for b in t.to_batches(max_chunksize=65536)]
table = pa.Table.from_batches(batches)
class S(fl.FlightServerBase):
    def do_get(self, context, ticket):
        return fl.RecordBatchStream(table)
s = S("grpc://127.0.0.1:0")
print("ceiling listening on", s.port, flush=True)
s.serve()
'''


def statement_query(sql: str) -> bytes:
    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(num, data):
        return varint((num << 3) | 2) + varint(len(data)) + data

    inner = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, inner)


def read_stream(reader) -> tuple[int, int]:
    rows = nbytes = 0
    for chunk in reader:
        rows += chunk.data.num_rows
        nbytes += chunk.data.nbytes
    return rows, nbytes


def doget(uri: str, data: pathlib.Path, noise: Noise) -> dict:
    def median_read(get_stream, runs=3):
        """One warm read, then the median of `runs` timed ones: (seconds, rows, bytes)."""
        read_stream(get_stream())
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            rows, nbytes = read_stream(get_stream())
            times.append(time.perf_counter() - t)
        return statistics.median(times), rows, nbytes

    client = flight.FlightClient(uri)
    query = flight.FlightDescriptor.for_command(statement_query("SELECT * FROM lineitem"))
    # A fresh FlightInfo (and ticket) for each read, as a client running the query again would.
    apiary_s, rows, nbytes = median_read(
        lambda: client.do_get(client.get_flight_info(query).endpoints[0].ticket))

    ceiling = Proc([sys.executable, "-c", CEILING, str(data / "lineitem.parquet"), str(BENCH)], "ceiling listening on")
    noise.track(ceiling.pid)
    try:
        port = int(ceiling.ready_line.split()[-1])
        c2 = flight.FlightClient(f"grpc://127.0.0.1:{port}")
        ceiling_s, crows, cbytes = median_read(lambda: c2.do_get(flight.Ticket(b"lineitem")))
    finally:
        ceiling.stop()
    return {
        "rows": rows,
        "apiary_seconds": apiary_s,
        "apiary_mb_per_s": nbytes / apiary_s / 1e6,
        "apiary_rows_per_s": rows / apiary_s,
        "ceiling_seconds": ceiling_s,
        "ceiling_mb_per_s": cbytes / ceiling_s / 1e6,
        "ceiling_rows_per_s": crows / ceiling_s,
        "ratio": (nbytes / apiary_s) / (cbytes / ceiling_s),
    }


def select1_latency(uri: str, n=100) -> dict:
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        for _ in range(5):
            cur.execute("SELECT 1")
            cur.fetchall()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            cur.execute("SELECT 1")
            cur.fetchall()
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    out = {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}
    out["parts"] = select1_parts(uri, n)
    return out


def select1_parts(uri: str, n: int) -> dict:
    """Where `SELECT 1` spends its time: the two RPCs ADBC makes for it, each timed alone through
    pyarrow.flight (median ms), next to a bare RPC that does no work on the server (ListActions)."""
    client = flight.FlightClient(uri)
    query = flight.FlightDescriptor.for_command(statement_query("SELECT 1"))

    def median_ms(f) -> float:
        for _ in range(5):
            f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    def doget_alone() -> float:
        ticket = client.get_flight_info(query).endpoints[0].ticket
        t = time.perf_counter()
        client.do_get(ticket).read_all()
        return (time.perf_counter() - t) * 1000

    for _ in range(5):
        doget_alone()
    return {
        "bare_rpc_ms": median_ms(lambda: list(client.list_actions())),
        "get_flight_info_ms": median_ms(lambda: client.get_flight_info(query)),
        "do_get_ms": statistics.median(doget_alone() for _ in range(n)),
    }


def settled_rss(server: Proc, settle=2.0) -> int:
    """Resident memory of a freshly started server once its start-up work has settled."""
    time.sleep(settle)
    return proc_status(server.pid, "VmRSS:")


def run_capped(args, storage: str, memory: str, results: list, expected: dict, failures: list, noise) -> dict:
    """Every query again on a node started with `--memory`: its times (a column of each row),
    answers (checked against DuckDB's), idle and peak RSS."""
    server, uri = start_apiary(args.binary, storage, ["--memory", memory])
    noise.track(server.pid)
    try:
        idle = settled_rss(server)
        engine = Apiary(uri)
        texts = dict(queries())
        for row in results:
            sql = texts[row["query"]]
            try:
                secs, table = timed(engine, sql, args.runs)
                ok, why = same_answer(table, expected[row["query"]]) if expected.get(row["query"]) is not None else (False, "no answer to compare")
            except Exception as ex:
                secs, ok, why = float("nan"), False, str(ex)
            row["capped_ms"] = secs * 1000
            row["capped_match"] = ok
            if not ok:
                failures.append(f"{row['query']} with --memory {memory}: {why}")
            print(f"{row['query']}: apiary --memory {memory} {secs * 1000:8.1f} ms  {'ok' if ok else 'MISMATCH ' + why}", flush=True)
        engine.close()
        return {"memory": memory, "idle_rss": idle, "peak_rss": server.peak_rss(),
                "total_ms": sum(r["capped_ms"] for r in results)}
    finally:
        server.stop()


# ---- report -------------------------------------------------------------------------------------


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def select1_parts_text(parts) -> str:
    if not parts:
        return ""
    rpcs = parts["get_flight_info_ms"] + parts["do_get_ms"]
    return (
        f"; its two RPCs alone through pyarrow.flight: GetFlightInfo {parts['get_flight_info_ms']:.2f} ms + "
        f"DoGet {parts['do_get_ms']:.2f} ms = {rpcs:.2f} ms (a bare RPC, ListActions: "
        f"{parts['bare_rpc_ms']:.2f} ms), the rest is the ADBC driver's own"
    )


def markdown(report: dict) -> str:
    r = report
    capped = r.get("capped")
    lines = [
        f"# TPC-H SF{r['sf']:g} — Apiary vs DuckDB vs DataFusion",
        "",
        f"{r['when']} · {r['machine']} · median of {r['runs']} warm run(s) · "
        f"other processes used {r['noise_share'] * 100:.1f}% CPU{' (NOISY)' if r['noisy'] else ''}",
        "",
        "| query | Apiary ms | DuckDB ms | DataFusion ms | Apiary/DuckDB | Apiary/DataFusion | answer |"
        + (f" Apiary --memory {capped['memory']} ms | answer |" if capped else ""),
        "|---|---:|---:|---:|---:|---:|:---:|" + ("---:|:---:|" if capped else ""),
    ]
    for q in r["queries"]:
        lines.append(
            f"| {q['query']} | {q['apiary_ms']:.1f} | {q['duckdb_ms']:.1f} | {q['datafusion_ms']:.1f} | "
            f"{q['apiary_ms'] / q['duckdb_ms']:.2f} | {q['apiary_ms'] / q['datafusion_ms']:.2f} | "
            f"{'ok' if q['match'] else 'MISMATCH'} |"
            + (f" {q['capped_ms']:.1f} | {'ok' if q['capped_match'] else 'MISMATCH'} |" if capped else "")
        )
    t = r["totals"]
    lines += [
        f"| **total** | **{t['apiary_ms']:.0f}** | **{t['duckdb_ms']:.0f}** | **{t['datafusion_ms']:.0f}** | "
        f"**{t['apiary_ms'] / t['duckdb_ms']:.2f}** | **{t['apiary_ms'] / t['datafusion_ms']:.2f}** | |"
        + (f" **{capped['total_ms']:.0f}** | |" if capped else ""),
        f"| geomean of ratios | | | | {t['geomean_vs_duckdb']:.2f} | {t['geomean_vs_datafusion']:.2f} | |"
        + (" | |" if capped else ""),
        "",
        f"- Ingest (ADBC bulk ingest, 8 tables): {r['ingest']['rows']:,} rows in {r['ingest']['seconds']:.1f} s = "
        f"{r['ingest']['rows_per_s']:,.0f} rows/s, {r['ingest']['mb_per_s']:.1f} MB/s (Arrow bytes)",
        "- Apiary's frames: "
        + (", ".join(f"{t} CLUSTER BY ({c})" for t, c in r.get("cluster", {}).items()) or "no CLUSTER BY")
        + "; DuckDB and DataFusion read the generated Parquet files as they are",
        f"- DoGet of lineitem through pyarrow.flight (median of 3 after a warm read): Apiary {r['doget']['apiary_mb_per_s']:.0f} MB/s "
        f"({r['doget']['apiary_rows_per_s'] / 1e6:.2f} M rows/s) vs in-memory pyarrow Flight server "
        f"{r['doget']['ceiling_mb_per_s']:.0f} MB/s → ratio {r['doget']['ratio']:.2f}",
        f"- `SELECT 1` through ADBC: median {r['select1']['median_ms']:.2f} ms, p90 {r['select1']['p90_ms']:.2f} ms"
        + select1_parts_text(r["select1"].get("parts")),
        f"- Peak RSS of the server during the queries: {r['server_peak_rss'] / 2**20:.0f} MiB"
        + (f", during the ingest: {r['server_ingest_peak_rss'] / 2**20:.0f} MiB"
           if r.get("server_ingest_peak_rss") else "")
        + f"; idle after start {r.get('server_idle_rss', 0) / 2**20:.0f} MiB",
    ]
    if capped:
        lines.append(
            f"- With `--memory {capped['memory']}`: peak RSS {capped['peak_rss'] / 2**20:.0f} MiB, "
            f"idle after start {capped['idle_rss'] / 2**20:.0f} MiB"
        )
    lines += [
        f"- Whole run (data, ingest, {len(r['queries'])} queries × 3 engines, DoGet, latency): "
        f"{r['wall_seconds'] / 60:.1f} min",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="SF 0.01, one run; checks answers only")
    ap.add_argument("--data-dir", default=str(BENCH / "data"))
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    ap.add_argument("--binary", default=os.environ.get("APIARY_BIN"))
    ap.add_argument("--only", default=None, help="comma-separated queries, e.g. q01,q06")
    ap.add_argument("--memory", default=None,
                    help="also run every query on a node started with --memory SIZE on the same data "
                         "(a second column; default 1GiB for full runs, none for --quick; 'none' skips it)")
    ap.add_argument("--nodes", type=int, default=None,
                    help="swarm mode: N nodes vs 1 (one bee each) on a local root and on S3 (bench/swarm.py)")
    ap.add_argument("--pin", action="store_true",
                    help="swarm mode: run node i on core i-1 only (taskset), so that more nodes means more CPU")
    ap.add_argument("--s3", choices=["seaweedfs", "moto", "none"], default=None,
                    help="swarm mode: the S3 server (default seaweedfs, moto for --quick; none: local root only)")
    ap.add_argument("--cluster", choices=["on", "off"], default="on",
                    help="create lineitem and orders with CLUSTER BY their date column (default on)")
    args = ap.parse_args()
    if args.quick:
        args.sf, args.runs = 0.01, 1
    if args.memory is None:
        args.memory = "none" if args.quick else "1GiB"
    capped_memory = None if args.memory.lower() == "none" else args.memory
    if not args.binary:
        print("--binary or APIARY_BIN is required (bench/run sets it)", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out) if args.out else (BENCH / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    data = generate(args.sf, pathlib.Path(args.data_dir))
    if args.nodes:
        sys.path.insert(0, str(BENCH))
        import swarm

        return swarm.run(args, data)
    noise = Noise()
    storage = tempfile.mkdtemp(prefix="apiary-bench-")
    server, uri = start_apiary(args.binary, storage)
    noise.track(server.pid)
    idle_rss = settled_rss(server)
    failures = []
    capped = None
    try:
        print(f"ingesting SF{args.sf:g} into {uri}", flush=True)
        ing = ingest(uri, data, cluster=args.cluster == "on")
        ingest_peak = server.peak_rss()
        server.reset_peak_rss()
        print(f"ingest: {ing['rows']:,} rows, {ing['rows_per_s']:,.0f} rows/s, {ing['mb_per_s']:.1f} MB/s", flush=True)

        engines = [Apiary(uri), DuckDB(data), DataFusion(data)]
        results = []
        expected = {}
        selected = set(args.only.split(",")) if args.only else None
        for name, sql in queries():
            if selected and name not in selected:
                continue
            row = {"query": name}
            answers = {}
            for e in engines:
                try:
                    secs, table = timed(e, sql, args.runs)
                except Exception as ex:  # a failed engine is a failed benchmark
                    failures.append(f"{name} on {e.name}: {ex}")
                    secs, table = float("nan"), None
                row[f"{e.name}_ms"] = secs * 1000
                answers[e.name] = table
            ok, why = (False, "query failed")
            if answers["apiary"] is not None and answers["duckdb"] is not None:
                ok, why = same_answer(answers["apiary"], answers["duckdb"])
            expected[name] = answers["duckdb"]
            row["match"] = ok
            if not ok:
                failures.append(f"{name}: Apiary's answer differs from DuckDB's: {why}")
            print(
                f"{name}: apiary {row['apiary_ms']:8.1f} ms  duckdb {row['duckdb_ms']:8.1f} ms  "
                f"datafusion {row['datafusion_ms']:8.1f} ms  {'ok' if ok else 'MISMATCH ' + why}",
                flush=True,
            )
            results.append(row)
        for e in engines:
            e.close()

        dg = doget(uri, data, noise)
        print(f"doget: apiary {dg['apiary_mb_per_s']:.0f} MB/s vs ceiling {dg['ceiling_mb_per_s']:.0f} MB/s", flush=True)
        lat = select1_latency(uri)
        peak = server.peak_rss()
        if capped_memory:
            # The same frames, served by a node with a memory cap (the first one stops, so the
            # two never form a swarm).
            server.stop()
            capped = run_capped(args, storage, capped_memory, results, expected, failures, noise)
    finally:
        server.stop()
        shutil.rmtree(storage, ignore_errors=True)

    share = noise.share()
    totals = {
        k: sum(r[k] for r in results) for k in ("apiary_ms", "duckdb_ms", "datafusion_ms")
    }
    totals["geomean_vs_duckdb"] = geomean([r["apiary_ms"] / r["duckdb_ms"] for r in results])
    totals["geomean_vs_datafusion"] = geomean([r["apiary_ms"] / r["datafusion_ms"] for r in results])
    report = {
        "sf": args.sf,
        "runs": args.runs,
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "versions": {"duckdb": duckdb.__version__, "datafusion": datafusion.__version__, "pyarrow": pa.__version__},
        "noise_share": share,
        "noisy": share > 0.10,
        "ingest": ing,
        "cluster": CLUSTER if args.cluster == "on" else {},
        "queries": results,
        "totals": totals,
        "doget": dg,
        "select1": lat,
        "server_peak_rss": peak,
        "server_ingest_peak_rss": ingest_peak,
        "server_idle_rss": idle_rss,
        "capped": capped,
        "wall_seconds": time.perf_counter() - began,
        "failures": failures,
    }
    return publish(out, "latest", report, markdown(report))


def publish(out: pathlib.Path, name: str, report: dict, md: str) -> int:
    """Write `name`.json and `name`.md, print the table; non-zero exit when anything failed."""
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(md)
    print()
    print(md)
    if report["failures"]:
        print("FAILED:\n  " + "\n  ".join(report["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
