"""Apiary on a swarm: N nodes against one, on a local root and on S3, in one run.

Run it through `bench/run --nodes N [--pin]`. Every node is limited to one bee, so the speed-up
measures what spreading fragments over nodes buys, not more threads in one process. With `--pin`
node i runs under `taskset` on its own core (i - 1), so "more nodes" means "more CPU"; without it
the nodes share every core and a figure says little. The S3 backend is SeaweedFS for full runs
(it serves requests in parallel, as a real object store does) and moto for `--quick`. For each
backend:

1. node 1 starts alone on a fresh root; the TPC-H tables are ingested through it;
2. `--runs` rounds, each of two halves: the queries run through node 1 alone (a swarm of one
   runs everything locally), then nodes 2..N join and the same queries run through node 1, which
   now cuts them into fragments; then nodes 2..N stop. Alternating the halves puts drift on the
   machine on both sides of every ratio. Each half runs every query once untimed first;
3. the answers must equal the solo answers, and fragments must have run on at least two nodes;
4. fragment dispatch latency (posting a task to its claim) is read from every node's /metrics;
5. every node's /metrics gives the bytes its fragments wrote to storage, and the result shares it
   served, per query;
6. on S3, one query is repeated and the cell-cache hit rate of the repeat is computed from the
   nodes' cache counters.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import tpch
from tpch import BENCH, ROOT, Apiary, Noise, Proc, cpu_seconds, same_answer

# Queries dominated by scanning lineitem (with at most a small join).
SCAN_HEAVY = ["q01", "q06", "q12", "q14", "q19"]

# Plain scans whose result is big: on a swarm each node serves a share as its own endpoint, and
# the ADBC driver reads the endpoints in parallel. Reported beside TPC-H, not in its totals.
SCANS = [
    ("scan_wide", "SELECT l_orderkey, l_partkey, l_suppkey, l_quantity, l_extendedprice, l_discount, "
                  "l_shipdate, l_comment FROM lineitem WHERE l_shipdate >= DATE '1996-06-01'"),
    ("scan_narrow", "SELECT l_orderkey, l_linenumber, l_extendedprice FROM lineitem "
                    "WHERE l_discount = 0.05 AND l_quantity < 10"),
]


class Moto:
    """moto's S3 server on loopback, requests serialised (tests/python/moto_locked.py)."""

    def __init__(self, bucket: str):
        # moto binds port 0 and prints the port it got: no other process can take it in between.
        launcher = ROOT / "tests" / "python" / "moto_locked.py"
        ready = "moto_locked listening on port "
        self.proc = Proc([sys.executable, str(launcher), "-H", "127.0.0.1", "-p", "0"], ready)
        self.port = int(self.proc.ready_line.split(ready, 1)[1].split()[0])
        req = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT", data=b"")
        urllib.request.urlopen(req).read()
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        return s3_env(self.endpoint, "testing", "testing")

    def stop(self):
        self.proc.stop()


def s3_env(endpoint: str, key: str, secret: str) -> dict:
    """Environment that points `apiary` at an S3 server on loopback."""
    return {
        "APIARY_S3_ENDPOINT": endpoint,
        "APIARY_S3_REGION": "us-east-1",
        "APIARY_S3_ACCESS_KEY_ID": key,
        "APIARY_S3_SECRET_ACCESS_KEY": secret,
        "APIARY_S3_ALLOW_HTTP": "true",
    }


class Seaweed:
    """SeaweedFS (`weed mini`) on loopback with one bucket; checks credentials, serves in parallel."""

    KEY, SECRET = "bench", "bench-secret-key"

    def __init__(self, bucket: str, work: pathlib.Path):
        weed = shutil.which("weed") or str(pathlib.Path(sys.executable).parent / "weed")
        sys.path.insert(0, str(ROOT / "deploy"))
        from local_swarm import seaweed_ports, weed_mini  # as deploy/local-swarm starts it

        ports = seaweed_ports()
        (work / "seaweedfs").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.SECRET)
        self.proc = Proc(weed_mini(weed, str(work / "seaweedfs"), bucket, ports), "", env=env)
        self.port = ports[0]
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/{bucket}", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # any answer (403 for an anonymous request) means S3 is up
            except OSError:
                if time.time() > deadline or self.proc.proc.poll() is not None:
                    raise RuntimeError("SeaweedFS did not start:\n" + "".join(self.proc.lines[-30:]))
                time.sleep(0.2)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        return s3_env(self.endpoint, self.KEY, self.SECRET)

    def stop(self):
        self.proc.stop()


# Counters read from every node around each timed swarm run: bytes its fragments wrote to
# storage, the part of them written as hash-shuffle outputs, and result shares it served.
COUNTERS = {
    "shipped": "apiary_fragment_output_bytes_total",
    "shuffled": "apiary_shuffle_output_bytes_total",
    "shares": "apiary_result_shares_served_total",
}


def pinned(cmd: list[str], core: int | None) -> list[str]:
    """`cmd` under taskset on one core (of those this process may use), or as it is."""
    if core is None:
        return cmd
    cores = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cores[core % len(cores)])] + cmd


class Node:
    def __init__(self, binary: str, root: str, node_id: str, scratch: pathlib.Path, env: dict,
                 core: int | None = None):
        env = {**os.environ, "APIARY_LOG": "info,buoyant_kernel=warn,deltalake_core=warn", **env}
        cmd = [
            binary, "serve", "--storage", root, "--listen", "127.0.0.1:0",
            "--node-id", node_id, "--bees", "1", "--heartbeat-interval", "1s",
            "--metrics-listen", "127.0.0.1:0",
            "--cache-dir", str(scratch / node_id / "cache"),
            "--scratch-dir", str(scratch / node_id / "spill"),
        ]
        self.id = node_id
        self.core = core
        self.proc = Proc(pinned(cmd, core), "listening on ", env=env)
        self.uri = self.proc.ready_line.split("listening on ", 1)[1].split()[0]
        deadline = time.time() + 30
        self.metrics_url = None
        while self.metrics_url is None and time.time() < deadline:
            for line in self.proc.lines:
                m = re.search(r"metrics on (http://\S+)", line)
                if m:
                    self.metrics_url = m.group(1)
            time.sleep(0.05)
        if self.metrics_url is None:
            raise RuntimeError(f"{node_id} did not serve metrics")

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in urllib.request.urlopen(self.metrics_url).read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def stop(self):
        self.proc.stop()


def alive(engine: Apiary) -> set[str]:
    t = engine.run("SELECT node_id FROM system.swarm.nodes WHERE state = 'alive'")
    return set(t.column(0).to_pylist())


def wait_alive(engine: Apiary, want: set[str], timeout=60):
    deadline = time.time() + timeout
    while alive(engine) != want:
        if time.time() > deadline:
            raise RuntimeError(f"swarm is {alive(engine)}, expected {want}")
        time.sleep(0.2)


def total(nodes: list[Node], metric: str) -> float:
    return sum(n.metrics().get(metric, 0.0) for n in nodes)


def one_backend(name: str, binary: str, root: str, env: dict, data: pathlib.Path, n: int, runs: int,
                queries: list[tuple[str, str]], scratch: pathlib.Path, failures: list[str],
                noise: Noise, pin: bool, cluster: bool, server_pid: int | None = None) -> dict:
    print(f"== {name}: {root}", flush=True)
    core = (lambda i: i) if pin else (lambda i: None)
    nodes = [Node(binary, root, "bench-1", scratch, env, core(0))]
    noise.track(nodes[0].proc.pid)
    try:
        first = Apiary(nodes[0].uri)
        ing = tpch.ingest(nodes[0].uri, data, cluster=cluster)
        print(f"ingest: {ing['rows']:,} rows, {ing['rows_per_s']:,.0f} rows/s", flush=True)
        cells = {r["frame"]: r["cells"] for r in first.run(
            "SELECT frame, CAST(sum(cells_added) - sum(cells_removed) AS BIGINT) AS cells "
            "FROM system.lakehouse.history GROUP BY frame ORDER BY frame").to_pylist()}
        print(f"cells per frame: {cells}", flush=True)

        def join():
            for i in range(2, n + 1):
                nodes.append(Node(binary, root, f"bench-{i}", scratch, env, core(i - 1)))
                noise.track(nodes[-1].proc.pid)
            wait_alive(first, {x.id for x in nodes})

        def leave():
            while len(nodes) > 1:
                nodes.pop().stop()  # a graceful stop deletes the node's heartbeat
            wait_alive(first, {nodes[0].id})

        # The halves alternate: each round measures every query on node 1 alone, then on the
        # swarm (nodes 2..N start for the half and stop after it), so drift on the machine lands
        # on both sides of each ratio. Each half runs every query once to warm the nodes' caches
        # (a node that just started has read no footer), then once timed.
        one_s = {q: [] for q, _ in queries}
        many_s = {q: [] for q, _ in queries}
        # Per query and counter, what the swarm's nodes counted during each timed run.
        counted = {q: {c: [] for c in COUNTERS} for q, _ in queries}
        solo, many = {}, {}
        per_node: dict[str, int] = {}
        dispatch_rounds: dict[str, list[dict]] = {}
        # CPU the S3 server and the other nodes used during the timed halves, against wall time:
        # work the swarm adds besides the queries themselves (polling, heartbeats).
        server = [server_pid] if server_pid else []
        spent = {"wall_one": 0.0, "server_one": 0.0, "wall_many": 0.0, "server_many": 0.0, "peers_many": 0.0}
        for r in range(runs):
            if len(nodes) > 1:
                leave()
            for q, sql in queries:
                first.run(sql)
            w0, s0 = time.perf_counter(), cpu_seconds(server)
            for q, sql in queries:
                t = time.perf_counter()
                solo[q] = first.run(sql)
                one_s[q].append(time.perf_counter() - t)
            spent["wall_one"] += time.perf_counter() - w0
            spent["server_one"] += cpu_seconds(server) - s0
            join()
            before = {x.id: x.metrics() for x in nodes}
            for q, sql in queries:
                first.run(sql)
            peers = [x.proc.pid for x in nodes[1:]]
            w0, s0, p0 = time.perf_counter(), cpu_seconds(server), cpu_seconds(peers)
            for q, sql in queries:
                before_q = {c: total(nodes, metric) for c, metric in COUNTERS.items()}
                t = time.perf_counter()
                many[q] = first.run(sql)
                many_s[q].append(time.perf_counter() - t)
                for c, metric in COUNTERS.items():
                    counted[q][c].append(total(nodes, metric) - before_q[c])
            spent["wall_many"] += time.perf_counter() - w0
            spent["server_many"] += cpu_seconds(server) - s0
            spent["peers_many"] += cpu_seconds(peers) - p0
            for x in nodes:
                m, b = x.metrics(), before[x.id]
                per_node[x.id] = per_node.get(x.id, 0) + int(
                    m.get("apiary_fragments_executed_total", 0.0) - b.get("apiary_fragments_executed_total", 0.0))
                dispatch_rounds.setdefault(x.id, []).append({
                    "p50_ms": m.get('apiary_fragment_dispatch_seconds{quantile="0.5"}', 0.0) * 1000,
                    "p95_ms": m.get('apiary_fragment_dispatch_seconds{quantile="0.95"}', 0.0) * 1000,
                    "count": int(m.get("apiary_fragment_dispatch_seconds_count", 0)
                                 - b.get("apiary_fragment_dispatch_seconds_count", 0)),
                    "stolen": int(m.get("apiary_fragments_stolen_total", 0)
                                  - b.get("apiary_fragments_stolen_total", 0)),
                })
            print(f"round {r + 1}/{runs}: " + ", ".join(
                f"{q} {one_s[q][-1] * 1000:.0f}/{many_s[q][-1] * 1000:.0f}" for q, _ in queries), flush=True)

        rows = []
        for q, _ in queries:
            one_ms = statistics.median(one_s[q]) * 1000
            many_ms = statistics.median(many_s[q]) * 1000
            ok, why = same_answer(many[q], solo[q])
            if not ok:
                failures.append(f"{name} {q}: {n} nodes answer differently from 1 node: {why}")
            median = {c: statistics.median(v) for c, v in counted[q].items()}
            endpoints = max(1.0, median["shares"])
            rows.append({"query": q, "one_ms": one_ms, "many_ms": many_ms, "speedup": one_ms / many_ms,
                         "match": ok, "shipped_bytes": median["shipped"],
                         "shuffled_bytes": median["shuffled"], "endpoints": endpoints,
                         "result_rows": many[q].num_rows})
            print(f"{q}: 1 node {one_ms:8.1f} ms, {n} nodes {many_ms:8.1f} ms  speed-up {one_ms / many_ms:.2f}  "
                  f"shipped {rows[-1]['shipped_bytes'] / 1e6:.2f} MB "
                  f"(shuffle {rows[-1]['shuffled_bytes'] / 1e6:.2f})  endpoints {endpoints:.0f}  "
                  f"{'ok' if ok else 'MISMATCH ' + why}", flush=True)
        if sum(1 for v in per_node.values() if v > 0) < min(2, n):
            failures.append(f"{name}: fragments ran on fewer than two nodes: {per_node}")
        # A joining node's latency summary covers its own round; the coordinator's, every round
        # so far. Each is reported as the median over rounds, the counts summed.
        dispatch = {k: {"p50_ms": statistics.median(d["p50_ms"] for d in v),
                        "p95_ms": statistics.median(d["p95_ms"] for d in v),
                        "count": sum(d["count"] for d in v),
                        "stolen": sum(d["stolen"] for d in v)}
                    for k, v in dispatch_rounds.items()}

        cache = None
        if name != "local":
            q, sql = queries[0]
            first.run(sql)  # every node has now read the cells it is given at least once
            h0, m0 = total(nodes, "apiary_cache_hits_total"), total(nodes, "apiary_cache_misses_total")
            first.run(sql)
            h1, m1 = total(nodes, "apiary_cache_hits_total"), total(nodes, "apiary_cache_misses_total")
            lookups = (h1 - h0) + (m1 - m0)
            cache = {"query": q, "hits": int(h1 - h0), "misses": int(m1 - m0),
                     "hit_rate": (h1 - h0) / lookups if lookups else float("nan")}
            print(f"cache on a repeated {q}: {cache['hits']} hits, {cache['misses']} misses", flush=True)
        first.close()
        tpch_rows = [r for r in rows if r["query"].startswith("q")] or rows
        one = sum(r["one_ms"] for r in tpch_rows)
        many_total = sum(r["many_ms"] for r in tpch_rows)
        geomean = statistics.geometric_mean([r["speedup"] for r in tpch_rows])
        return {"backend": name, "ingest": ing, "cells": cells, "queries": rows, "one_ms": one,
                "many_ms": many_total, "speedup": one / many_total, "geomean": geomean,
                "fragments_per_node": per_node, "dispatch": dispatch, "cache": cache,
                "cpu": {"server_one": spent["server_one"] / max(spent["wall_one"], 1e-9),
                        "server_many": spent["server_many"] / max(spent["wall_many"], 1e-9),
                        "peers_many": spent["peers_many"] / max(spent["wall_many"], 1e-9) / max(n - 1, 1),
                        "has_server": bool(server)}}
    except Exception:
        # The client sees only a reference for an internal error: show what the nodes logged.
        for x in nodes:
            for line in x.proc.lines:
                if " ERROR " in line or " WARN " in line:
                    print(f"{x.id}: {line.rstrip()}", flush=True)
        raise
    finally:
        for x in nodes:
            x.stop()


def markdown(r: dict) -> str:
    n = r["nodes"]
    pin = "each node pinned to its own core (taskset)" if r["pinned"] else "nodes NOT pinned: they share every core"
    lines = [f"# Apiary swarm: {n} nodes vs 1, TPC-H SF{r['sf']:g}, one bee per node", "",
             f"{pin}; the client and the S3 server are not pinned.", "",
             f"{r['when']} · {r['machine']} · median of {r['runs']} alternated round(s) · "
             f"other processes used {r['noise_share'] * 100:.1f}% CPU{' (NOISY)' if r['noisy'] else ''}", ""]
    for b in r["backends"]:
        lines += [f"## {b['backend']}", "",
                  f"| query | 1 node ms | {n} nodes ms | speed-up | shipped MB | of which shuffle MB | endpoints | answer |",
                  "|---|---:|---:|---:|---:|---:|---:|:---:|"]
        tpch_rows = [q for q in b["queries"] if q["query"].startswith("q")]
        scans = [q for q in b["queries"] if not q["query"].startswith("q")]

        def row(q, name=None):
            return (f"| {name or q['query']} | {q['one_ms']:.1f} | {q['many_ms']:.1f} | {q['speedup']:.2f} | "
                    f"{q['shipped_bytes'] / 1e6:.2f} | {q.get('shuffled_bytes', 0) / 1e6:.2f} | "
                    f"{q.get('endpoints', 1):.0f} | {'ok' if q['match'] else 'MISMATCH'} |")
        lines += [row(q) for q in tpch_rows]
        lines.append(f"| **total** | **{b['one_ms']:.0f}** | **{b['many_ms']:.0f}** | **{b['speedup']:.2f}** | "
                     f"{sum(q['shipped_bytes'] for q in tpch_rows) / 1e6:.2f} | "
                     f"{sum(q.get('shuffled_bytes', 0) for q in tpch_rows) / 1e6:.2f} | | |")
        lines.append(f"| geomean | | | {b['geomean']:.2f} | | | | |")
        if scans:
            lines += ["| *plain scans, read by ADBC from every endpoint (not in the totals)* | | | | | | | |"]
            lines += [row(q, f"{q['query']} ({q.get('result_rows', 0):,} rows)") for q in scans]
        lines.append("")
        lines.append("- Cells per frame: " + ", ".join(f"{k} {v}" for k, v in b["cells"].items()))
        lines.append("- Fragments executed per node: " + ", ".join(f"{k} {v}" for k, v in b["fragments_per_node"].items()))
        for k, d in b["dispatch"].items():
            lines.append(f"- Dispatch latency (posted → claimed) on {k}: p50 {d['p50_ms']:.0f} ms, "
                         f"p95 {d['p95_ms']:.0f} ms over {d['count']} fragments"
                         + (f"; it took over {d['stolen']} left unclaimed" if d.get("stolen") else ""))
        cpu = b.get("cpu")
        if cpu:
            server = (f"the S3 server used {cpu['server_one'] * 100:.0f}% of a core while node 1 ran "
                      f"alone and {cpu['server_many'] * 100:.0f}% while the swarm ran; "
                      if cpu["has_server"] else "")
            lines.append(f"- CPU besides node 1 during the timed queries: {server}each other node used "
                         f"{cpu['peers_many'] * 100:.0f}% of its core")
        if b["cache"]:
            c = b["cache"]
            lines.append(f"- Cell cache on a repeated {c['query']}: {c['hits']} hits, {c['misses']} misses "
                         f"→ hit rate {c['hit_rate'] * 100:.0f}%")
        lines.append("")
    return "\n".join(lines)


def run(args, data: pathlib.Path) -> int:
    n = args.nodes
    selected = set(args.only.split(",")) if args.only else set(SCAN_HEAVY)
    queries = [(q, sql) for q, sql in tpch.queries() if q in selected]
    queries += [(q, sql) for q, sql in SCANS if not args.only or q in selected or "scans" in selected]
    out = pathlib.Path(args.out) if args.out else BENCH / "results" / ("quick" if args.quick else "")
    # --quick (the test suite) uses data far below the distribution threshold: lower it to zero so
    # the swarm path is exercised and its answers checked.
    extra = {"APIARY_DISTRIBUTE_MIN_BYTES": "0"} if args.quick else {}
    out.mkdir(parents=True, exist_ok=True)
    noise = Noise()
    failures: list[str] = []
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="apiary-swarm-"))
    s3 = args.s3 or ("moto" if args.quick else "seaweedfs")
    store = None
    backends = []
    try:
        backends.append(one_backend("local", args.binary, str(scratch / "root"), dict(extra), data, n, args.runs,
                                    queries, scratch / "local", failures, noise, args.pin,
                                    args.cluster == "on"))
        if s3 != "none":
            store = Moto("bench") if s3 == "moto" else Seaweed("bench", scratch)
            noise.track(store.proc.pid)
            backends.append(one_backend(s3, args.binary, f"s3://bench/{uuid.uuid4().hex[:8]}",
                                        {**store.env(), **extra}, data, n, args.runs, queries, scratch / s3,
                                        failures, noise, args.pin, args.cluster == "on", store.proc.pid))
    finally:
        if store:
            store.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    share = noise.share()

    report = {"nodes": n, "sf": args.sf, "runs": args.runs, "pinned": bool(args.pin),
              "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()} cores", "noise_share": share, "noisy": share > 0.10,
              "backends": backends, "failures": failures}
    name = f"swarm-{n}" + ("-pinned" if args.pin else "")
    return tpch.publish(out, name, report, markdown(report))
