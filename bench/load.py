"""A bounded load test: many ADBC clients at once against one `apiary serve`, on loopback.

Each client (one thread, one ADBC connection) loops for the duration over a mix of operations:
queries over a 200k-row frame, `SELECT 1`, metadata (GetObjects, GetTableSchema), and bulk
ingest of 1,000 rows into one of four frames. It reports errors by gRPC status, p50/p99 latency
per operation, the server's peak RSS sampled every 100 ms, and the share of CPU other processes
used meanwhile. Calls the server sheds at its --max-calls limit (RESOURCE_EXHAUSTED) are counted
apart: they are the limit working, not failures.

    bench/load                       64 clients, 60 s, release build
    bench/load --clients 16 --seconds 10
    bench/load --quick               16 clients, 8 s, debug build, checked (part of scripts/test)

Exits non-zero when any call failed (other than shed), when ingested rows do not all arrive, or
when peak RSS exceeds --memory plus the documented overhead (256 MiB).
"""

import argparse
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERHEAD_MIB = 256


def apiary_bin() -> str:
    explicit = os.environ.get("APIARY_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(pathlib.Path.home() / ".cache/apiary/target"))
    return str(pathlib.Path(target) / "release" / "apiary")


def start_server(storage: str, memory: str, bees: int):
    """Start the node; its log goes to <storage>.log (named when the run fails)."""
    log_path = storage + ".log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [apiary_bin(), "serve", "--storage", storage, "--listen", "127.0.0.1:0",
         "--memory", memory, "--bees", str(bees)],
        stderr=log, stdout=subprocess.DEVNULL, text=True,
        env=dict(os.environ, APIARY_LOG="info,buoyant_kernel=warn,deltalake_core=warn"),
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        for line in open(log_path):
            if "listening on " in line:
                return proc, line.split("listening on ", 1)[1].split()[0], log_path
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start:\n" + open(log_path).read())


def rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_ticks():
    """(total, of this process tree) jiffies, for the other processes' CPU share."""
    fields = open("/proc/stat").readline().split()[1:]
    return sum(int(x) for x in fields[:8]), int(fields[3]) + int(fields[4])


def proc_ticks(pid: int) -> int:
    try:
        parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except OSError:
        return 0


def status_of(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "INVALID_ARGUMENT", "NOT_FOUND",
                 "INTERNAL", "CANCELLED", "DEADLINE_EXCEEDED", "ALREADY_EXISTS", "UNKNOWN"):
        if code in text or code.replace("_", " ").title().replace(" ", "") in text:
            return code
    if "--max-calls" in text:
        return "RESOURCE_EXHAUSTED"
    return text[:120]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--memory", default="1GiB")
    ap.add_argument("--bees", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.seconds = 16, 8
    memory_mib = int(args.memory.removesuffix("GiB")) * 1024 if args.memory.endswith("GiB") \
        else int(args.memory.removesuffix("MiB"))

    tmp = tempfile.mkdtemp(prefix="apiary-load-")
    proc, uri, log_path = start_server(os.path.join(tmp, "root"), args.memory, args.bees)
    try:
        with flightsql.connect(uri) as conn, conn.cursor() as cur:
            n = 200_000
            facts = pa.table({
                "id": pa.array(range(n), pa.int64()),
                "k": pa.array([i % 97 for i in range(n)], pa.int64()),
                "v": pa.array([float(i % 1013) for i in range(n)], pa.float64()),
                "s": pa.array([f"name-{i % 5000}" for i in range(n)]),
            })
            cur.adbc_ingest("facts", facts, mode="create")
            conn.commit()

        queries = [
            "SELECT k, count(*), sum(v) FROM facts GROUP BY k ORDER BY k",
            "SELECT count(*) FROM facts WHERE v > 500 AND s LIKE 'name-1%'",
            "SELECT id, v FROM facts WHERE id % 1000 = 7 ORDER BY id LIMIT 50",
        ]
        stop = time.time() + args.seconds
        lat: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        shed = [0]
        ingested = [0] * 4
        lock = threading.Lock()

        def client(i: int):
            rnd = random.Random(i)
            batch = pa.table({"c": pa.array(range(1000), pa.int64()), "who": pa.array([i] * 1000, pa.int64())})
            try:
                conn = flightsql.connect(uri)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors[status_of(e)] = errors.get(status_of(e), 0) + 1
                return
            with conn:
                while time.time() < stop:
                    r = rnd.random()
                    t0 = time.perf_counter()
                    try:
                        if r < 0.40:
                            op = "query"
                            with conn.cursor() as c:
                                c.execute(rnd.choice(queries))
                                c.fetch_arrow_table()
                        elif r < 0.60:
                            op = "select1"
                            with conn.cursor() as c:
                                c.execute("SELECT 1")
                                c.fetchall()
                        elif r < 0.85:
                            op = "metadata"
                            if rnd.random() < 0.5:
                                conn.adbc_get_objects(depth="all").read_all()
                            else:
                                conn.adbc_get_table_schema("facts")
                        else:
                            op = "ingest"
                            target = i % 4
                            with conn.cursor() as c:
                                c.adbc_ingest(f"ing{target}", batch, mode="create_append")
                            conn.commit()
                            with lock:
                                ingested[target] += 1000
                        with lock:
                            lat.setdefault(op, []).append(time.perf_counter() - t0)
                    except Exception as e:  # noqa: BLE001
                        code = status_of(e)
                        with lock:
                            if code == "RESOURCE_EXHAUSTED":
                                shed[0] += 1
                            else:
                                errors[code] = errors.get(code, 0) + 1
                                if errors[code] <= 3:
                                    print(f"client {i} {op}: {e}", file=sys.stderr)

        peak = [rss_mib(proc.pid)]
        start_total, start_idle = cpu_ticks()
        start_server_ticks = proc_ticks(proc.pid)
        start_self = os.times()

        def sampler():
            while time.time() < stop + 1:
                peak[0] = max(peak[0], rss_mib(proc.pid))
                time.sleep(0.1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        s = threading.Thread(target=sampler, daemon=True)
        s.start()
        t_start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t_start
        s.join(timeout=2)
        end_total, end_idle = cpu_ticks()
        busy = (end_total - start_total) - (end_idle - start_idle)
        server_busy = proc_ticks(proc.pid) - start_server_ticks
        end_self = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        self_busy = ((end_self.user - start_self.user) + (end_self.system - start_self.system)) * hz
        total = max(1, end_total - start_total)
        other_share = max(0.0, busy - server_busy - self_busy) / total

        with flightsql.connect(uri) as conn, conn.cursor() as cur:
            arrived = []
            for t in range(4):
                if ingested[t] == 0:
                    arrived.append(0)
                    continue
                cur.execute(f"SELECT count(*) FROM ing{t}")
                arrived.append(cur.fetchone()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    def pct(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(p * len(v)))] * 1000 if v else 0.0

    calls = sum(len(v) for v in lat.values())
    result = {
        "clients": args.clients, "seconds": round(wall, 1), "memory": args.memory, "bees": args.bees,
        "calls": calls, "calls_per_s": round(calls / wall, 1), "shed": shed[0], "errors": errors,
        "ops": {op: {"n": len(v), "p50_ms": round(pct(v, 0.5), 2), "p99_ms": round(pct(v, 0.99), 2)}
                for op, v in sorted(lat.items())},
        "peak_rss_mib": round(peak[0], 1), "rss_bound_mib": memory_mib + OVERHEAD_MIB,
        "ingested_rows": ingested, "arrived_rows": arrived,
        "other_cpu_share": round(other_share, 3),
    }
    lines = [
        f"# Load: {args.clients} ADBC clients, {wall:.0f} s, --memory {args.memory} --bees {args.bees}",
        "",
        f"{calls} calls ({calls / wall:.0f}/s), {shed[0]} shed at --max-calls, errors: {errors or 'none'}; "
        f"peak server RSS {peak[0]:.0f} MiB (bound {memory_mib + OVERHEAD_MIB} MiB); "
        f"other processes' CPU share {other_share:.1%}",
        "",
        "| operation | calls | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ] + [f"| {op} | {d['n']} | {d['p50_ms']} | {d['p99_ms']} |" for op, d in result["ops"].items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.md").write_text(text)
    (out / "load.json").write_text(json.dumps(result, indent=2) + "\n")

    failed = []
    if errors:
        failed.append(f"errors: {errors}")
    if arrived != ingested:
        failed.append(f"ingested {ingested} but {arrived} arrived")
    if peak[0] > memory_mib + OVERHEAD_MIB:
        failed.append(f"peak RSS {peak[0]:.0f} MiB over {memory_mib + OVERHEAD_MIB} MiB")
    if calls == 0:
        failed.append("no call completed")
    for f in failed:
        print("FAILED:", f, file=sys.stderr)
    if failed:
        print(f"server log: {log_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
