#!/usr/bin/env python3
"""A/B of two `apiary` builds on one storage root: DoGet of a 4 M-row table through
pyarrow.flight (MB/s, 3 reads after a warm one) and `SELECT 1` through ADBC (median of 200), each
build started in turn three times (alternating order), with the other processes' CPU share.

    ~/.cache/apiary/venv/bin/python bench/ab.py OLD_BINARY NEW_BINARY      # uses /tmp/ab/root (made on first run), port 55311
"""
import os, subprocess, sys, time, statistics, struct
import pyarrow.flight as fl
import adbc_driver_flightsql.dbapi as f
OLD, NEW = sys.argv[1], sys.argv[2]
ROOT = os.environ.get("AB_ROOT", "/tmp/ab/root")
PORT = 55311
def start(b):
    p = subprocess.Popen([b, "serve", "--storage", ROOT, "--listen", f"127.0.0.1:{PORT}"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            fl.FlightClient(f"grpc://127.0.0.1:{PORT}").list_actions(); return p
        except Exception: time.sleep(0.1)
    raise SystemExit("no start")
def varint(n):
    out = b""
    while True:
        b = n & 0x7F; n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
def cmd(sql):
    inner = b"\x0a" + varint(len(sql)) + sql.encode()
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return b"\x0a" + varint(len(url)) + url + b"\x12" + varint(len(inner)) + inner
def doget(c):
    d = fl.FlightDescriptor.for_command(cmd("SELECT * FROM big"))
    t = time.perf_counter(); n = 0; nb = 0
    r = c.do_get(c.get_flight_info(d).endpoints[0].ticket)
    for chunk in r:
        n += chunk.data.num_rows; nb += chunk.data.nbytes
    return time.perf_counter() - t, nb
if not os.path.exists(ROOT):
    p = start(NEW)
    with f.connect(f"grpc://127.0.0.1:{PORT}", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE big AS SELECT value AS k, value * 3 AS v, CAST(value AS DOUBLE) / 7 AS d, concat('item-', CAST(value % 100000 AS VARCHAR), '-description') AS s FROM generate_series(1, 4000000)")
    p.terminate(); p.wait()
res = {OLD: [], NEW: []}; lat = {OLD: [], NEW: []}
def busy():
    v = list(map(int, open('/proc/stat').readline().split()[1:]))
    return sum(v) - v[3] - v[4]
def proc_cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])
tick = os.sysconf('SC_CLK_TCK'); ncpu = os.cpu_count()
t0 = time.time(); b0 = busy(); c0 = sum(os.times()[:2]); server_jiffies = 0
for rnd in range(3):
    for b in (OLD, NEW) if rnd % 2 == 0 else (NEW, OLD):
        p = start(b)
        c = fl.FlightClient(f"grpc://127.0.0.1:{PORT}")
        doget(c)
        for _ in range(3):
            s, nb = doget(c); res[b].append(nb / s / 1e6)
        with f.connect(f"grpc://127.0.0.1:{PORT}", autocommit=True) as conn, conn.cursor() as cur:
            for i in range(220):
                t = time.perf_counter(); cur.execute("SELECT 1"); cur.fetchall()
                if i >= 20: lat[b].append((time.perf_counter() - t) * 1000)
        server_jiffies += proc_cpu(p.pid)
        p.terminate(); p.wait()
other = (busy() - b0 - server_jiffies - (sum(os.times()[:2]) - c0) * tick) / tick
print(f"other processes' CPU share: {100 * other / ((time.time() - t0) * ncpu):.1f} % of {ncpu} cores")
for name, b in (("old", OLD), ("new", NEW)):
    print(f"{name}: DoGet median {statistics.median(res[b]):.0f} MB/s (runs {[round(x) for x in res[b]]}), SELECT 1 median {statistics.median(lat[b]):.2f} ms")
print(f"new/old DoGet {statistics.median(res[NEW]) / statistics.median(res[OLD]):.3f}, SELECT 1 {statistics.median(lat[NEW]) / statistics.median(lat[OLD]):.3f}")
