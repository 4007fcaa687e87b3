"""deploy/: static checks of the container, compose, systemd and Kubernetes files, and the local
swarm (SeaweedFS + three real `apiary serve` processes) queried through every node, with its
status page rendered in a real headless browser."""

import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import pytest
import yaml

from conftest import ROOT, apiary_bin

DEPLOY = ROOT / "deploy"
VENV_BIN = pathlib.Path(sys.executable).parent


def test_compose_has_a_store_a_bucket_and_three_nodes_on_one_bucket():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert "seaweedfs" in services and "bucket" in services
    nodes = {k: v for k, v in services.items() if k.startswith("apiary-")}
    assert len(nodes) == 3
    storages, secrets, ports = set(), set(), set()
    for name, svc in nodes.items():
        env = svc["environment"]
        storages.add(env["APIARY_STORAGE"])
        secrets.add(env["APIARY_TOKEN_SECRET"])
        assert env["APIARY_USERS"], "auth on"
        assert env["APIARY_METRICS_LISTEN"].endswith(":9090"), "metrics on"
        assert env["APIARY_NODE_ID"] == name
        assert svc["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        ports.update(svc["ports"])
    assert len(storages) == 1 and storages.pop().startswith("s3://")
    assert len(secrets) == 1, "one token secret shared by every node"
    assert len(ports) == 6


def test_kubernetes_manifests_have_what_a_swarm_needs():
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            assert "kind" in d, path
            docs[d["kind"]] = d
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Kustomization", "Namespace"} <= set(docs)
    for kind in ("Deployment", "Service", "ConfigMap", "Secret"):
        assert docs[kind]["apiVersion"] and docs[kind]["metadata"]["name"] == "apiary"
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["APIARY_ADVERTISE_URL"]["value"] == "grpc://$(POD_IP):50051"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    config = docs["ConfigMap"]["data"]
    # Requests match what the node is told it has.
    assert c["resources"]["requests"]["cpu"] == config["APIARY_BEES"]
    assert config["APIARY_MEMORY"] == "1GiB" and c["resources"]["limits"]["memory"] == "1280Mi"
    secret = docs["Secret"]["stringData"]
    assert "APIARY_USERS" in secret and "APIARY_TOKEN_SECRET" in secret
    assert spec["terminationGracePeriodSeconds"] > 30


def deployed_environments():
    """(where, environment) of every Apiary node the compose file and the manifests start."""
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in doc["services"].items():
        if name.startswith("apiary-"):
            yield f"compose {name}", dict(svc["environment"])
    k8s = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            k8s[d["kind"]] = d
    env = dict(k8s["ConfigMap"]["data"]) | dict(k8s["Secret"]["stringData"])
    container = k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env |= {e["name"]: e["value"] for e in container["env"] if "value" in e}
    yield "k8s", env


def check_config(env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    return subprocess.run([apiary_bin(), "check-config"], env=clean | env, capture_output=True, text=True)


def test_every_deployed_environment_passes_check_config(tmp_path):
    """The flags each deployment gives (auth on a public address, a public status page, sizes and
    durations) are what `serve` accepts: `apiary check-config` passes them, storage aside."""
    hashed = subprocess.run([apiary_bin(), "hash-password"], input="secret\n", capture_output=True,
                            text=True, check=True).stdout.strip()
    for where, env in deployed_environments():
        env = {k: str(v) for k, v in env.items() if not k.startswith("APIARY_S3_")}
        env |= {
            # Storage is the one thing these files point elsewhere: a local root stands in.
            "APIARY_STORAGE": str(tmp_path / "root"),
            "APIARY_USERS": f"alice:{hashed}",
            "APIARY_TOKEN_SECRET": "a-token-secret-of-some-length",
            "APIARY_SCRATCH_DIR": str(tmp_path / "scratch"),
            "APIARY_CACHE_DIR": str(tmp_path / "cache"),
        }
        env = {k: v.replace("$(POD_IP)", "10.0.0.7").replace("$(POD_NAME)", "apiary-0") for k, v in env.items()}
        out = check_config(env)
        assert out.returncode == 0, f"{where}: {out.stderr}"
        # The check bites: without the switches that allow it, the same node is refused.
        for switch, why in (("APIARY_INSECURE_AUTH", "without TLS"), ("APIARY_METRICS_PUBLIC", "--metrics-public")):
            out = check_config({k: v for k, v in env.items() if k != switch})
            assert out.returncode != 0 and why in out.stderr, f"{where} without {switch}: {out.stderr}"


def test_the_systemd_unit_verifies_cleanly(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed"
    unit = (DEPLOY / "systemd" / "apiary.service").read_text()
    for key in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=", "MemoryMax=",
                "Restart=on-failure", "StandardOutput=journal"):
        assert key in unit, key
    # verify checks that ExecStart exists: point it at the binary under test.
    local = tmp_path / "apiary.service"
    local.write_text(unit.replace("/usr/local/bin/apiary", apiary_bin()))
    out = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    env = (DEPLOY / "systemd" / "apiary.env").read_text()
    assert "APIARY_MEMORY=1GiB" in env


def test_the_dockerfile_lints_clean():
    hadolint = VENV_BIN / "hadolint"
    out = subprocess.run([str(hadolint), "--config", str(DEPLOY / ".hadolint.yaml"), str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "USER 10001" in text
    # The image builds its binary with the command deploy/local-swarm builds with.
    build = "cargo build --release --locked -p apiary-server --bin apiary"
    assert build in text and build in (DEPLOY / "local-swarm").read_text()
    assert "CARGO_PROFILE_RELEASE_STRIP=debuginfo" in text, "a small image: no debug info"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "target" in ignored


def chromium(*args, timeout=60):
    exe = shutil.which("chromium")
    assert exe, "chromium (Debian package chromium) is needed"
    profile = tempfile.mkdtemp(prefix="apiary-chromium-")
    try:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
            capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def refused(url):
    host, port = url.split("://", 1)[1].rstrip("/").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) != 0


def test_local_swarm_serves_through_every_node_and_shows_its_status_page(tmp_path):
    env = dict(os.environ, APIARY_BIN=apiary_bin())
    proc = subprocess.Popen(
        [str(DEPLOY / "local-swarm"), "--nodes", "3", "--dir", str(tmp_path / "swarm"), "--password", "s3cret"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    nodes = []
    try:
        deadline = time.time() + 180
        while True:
            line = lines.get(timeout=max(1, deadline - time.time()))
            if line.strip() == "READY":
                break
            parts = line.split()
            if len(parts) == 5 and parts[1] == "flight":
                nodes.append((parts[0], parts[2], parts[4]))
        assert [n[0] for n in nodes] == ["local-1", "local-2", "local-3"]

        # Every node answers and sees the whole swarm; what one writes, the others read.
        for i, (name, flight, _) in enumerate(nodes):
            with flightsql.connect(flight, db_kwargs={"username": "apiary", "password": "s3cret"}) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT node_id FROM system.swarm.nodes WHERE state = 'alive' ORDER BY node_id")
                    assert [r[0] for r in cur.fetchall()] == ["local-1", "local-2", "local-3"], name
                    if i == 0:
                        cur.execute("CREATE TABLE shared AS SELECT 42 AS v")
                    cur.execute("SELECT v FROM shared")
                    assert cur.fetchall() == [(42,)], name

        # The status page, in a real browser, after its script ran.
        status = nodes[0][2]
        dom = chromium("--dump-dom", status).stdout
        for name, _, _ in nodes:
            assert name in dom, dom[:2000]
        assert "local-1 (this node)" in dom
        shot = tmp_path / "status.png"
        chromium("--window-size=1280,900", f"--screenshot={shot}", status)
        assert shot.stat().st_size > 10_000
        if os.environ.get("APIARY_DOCS_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "status-page.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        code = proc.wait(90)
    assert code == 0, proc.stderr.read()
    for _, flight, status in nodes:
        assert refused(flight) and refused(status)


def test_a_draining_node_delivers_what_it_committed_and_says_it_drains(tmp_path):
    """SIGTERM while an INSERT runs through ADBC (GetFlightInfo runs it, a DoGet reads its count):
    the INSERT commits during the drain and its count is delivered, where the DoGet was refused
    UNAVAILABLE and a retrying client inserted the rows twice. New statements are refused
    UNAVAILABLE meanwhile, and /healthz says 503 so that balancers stop sending clients."""
    import urllib.error
    import urllib.request

    from conftest import ApiaryServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{s.getsockname()[1]}"
    root = str(tmp_path / "root")
    # The test hook holds each commit 2 s, as a large INSERT's write would.
    node = ApiaryServer(root, args=["--fault-pause-before-commit-ms", "2000", "--metrics-listen", metrics])
    try:
        with flightsql.connect(node.uri) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (a BIGINT)")
        out = {}

        def insert():
            try:
                with flightsql.connect(node.uri) as conn, conn.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (1), (2), (3)")
                    out["rows"] = cur.fetchall()
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = str(e)

        writer = threading.Thread(target=insert)
        writer.start()
        time.sleep(0.7)
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait_log("shutting down")
        with pytest.raises(urllib.error.HTTPError) as probe:
            urllib.request.urlopen(f"http://{metrics}/healthz", timeout=5)
        assert probe.value.code == 503
        with flightsql.connect(node.uri) as conn, conn.cursor() as cur:
            with pytest.raises(Exception, match="shutting down"):
                cur.execute("SELECT 1")
        writer.join(60)
        assert out == {"rows": [(3,)]}, out
        node.proc.wait(60)
    finally:
        node.stop()
    again = ApiaryServer(root)
    try:
        with flightsql.connect(again.uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchall() == [(3,)]
    finally:
        again.stop()


def test_silent_connections_are_closed_and_connections_are_capped(tmp_path):
    """A socket that connects and never speaks HTTP/2 (a port scanner, a half-open connection, a
    client dribbling bytes) is closed after --handshake-timeout; before, it was held for ever
    with its file descriptor, and enough of them starved the node. At --max-connections one
    more connection is closed at once (UNAVAILABLE for the client), and the slot frees when a
    connection closes. A connection that is HTTP/2 already is not cut however long it idles."""
    from conftest import ApiaryServer

    node = ApiaryServer(str(tmp_path / "root"), args=["--max-connections", "3", "--handshake-timeout", "3s"])
    try:
        with flightsql.connect(node.uri) as idle, idle.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchall() == [(1,)]
            time.sleep(4)
            # Two of the three slots now: this connection and the silent socket below.
            host, port = node.addr.rsplit(":", 1)
            silent = socket.create_connection((host, int(port)))
            silent.settimeout(10)
            start = time.monotonic()
            assert silent.recv(16) == b""
            assert 2 < time.monotonic() - start < 8
            cur.execute("SELECT 2")
            assert cur.fetchall() == [(2,)]

            # A client that dribbles the HTTP/2 preface a byte at a time is cut at the deadline.
            dribbler = socket.create_connection((host, int(port)))
            start = time.monotonic()
            with pytest.raises(OSError):
                for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" * 4:
                    dribbler.sendall(bytes([b]))
                    time.sleep(0.2)
            assert time.monotonic() - start < 8
            dribbler.close()

            # The cap: with the idle ADBC connection and two silent sockets, a new client is
            # refused at once, and served once the silent ones are closed.
            held = [socket.create_connection((host, int(port))) for _ in range(2)]
            time.sleep(0.2)
            with pytest.raises(Exception, match="Unavailable|UNAVAILABLE|14"):
                with flightsql.connect(node.uri) as other, other.cursor() as c2:
                    c2.execute("SELECT 3")
            assert node.wait_log("refusing connections: 3 are open")
            for s in held:
                s.settimeout(10)
                assert s.recv(16) == b""
            with flightsql.connect(node.uri) as other, other.cursor() as c2:
                c2.execute("SELECT 3")
                assert c2.fetchall() == [(3,)]
            silent.close()
    finally:
        node.stop()


def test_a_statement_past_its_deadline_during_its_commit_reports_the_commit(tmp_path):
    """A statement whose deadline passes while its commit is being put may have committed: it
    is seen to its end and answers what happened. It was reported as DEADLINE_EXCEEDED with its
    rows in the frame, and a client that ran the failed INSERT again doubled them. One stopped
    before its commit commits nothing."""
    from conftest import ApiaryServer

    root = str(tmp_path / "root")
    # The test hook holds each commit 2 s, past the 1 s deadline.
    node = ApiaryServer(root, args=["--fault-pause-before-commit-ms", "2000", "--query-timeout", "1s"])
    try:
        with flightsql.connect(node.uri) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (a BIGINT)")
            started = time.monotonic()
            cur.execute("INSERT INTO t VALUES (1), (2), (3)")
            assert cur.fetchall() == [(3,)]
            assert time.monotonic() - started >= 2
            assert node.wait_log("waiting for its outcome")
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchall() == [(3,)]
            # Stopped before its commit (the cross join runs past the deadline): nothing lands.
            with pytest.raises(Exception, match="(?i)timed out|deadline"):
                cur.execute("INSERT INTO t SELECT a.value FROM generate_series(1, 10000000000) a "
                            "WHERE a.value = 0")
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchall() == [(3,)]
    finally:
        node.stop()


def test_a_ctas_still_running_when_the_shutdown_timeout_ends_frees_its_name(tmp_path):
    """SIGTERM while a CREATE TABLE AS computes past --shutdown-timeout: the node exited under
    it, as if killed, and after a restart the name stayed reserved ("being created"; a CREATE
    waited and got ALREADY_EXISTS). The statement is now cut short as a cancel would, and its
    creation undone, before the process exits."""
    from conftest import ApiaryServer

    root = str(tmp_path / "root")
    node = ApiaryServer(root, args=["--shutdown-timeout", "1s"])
    try:
        with flightsql.connect(node.uri) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE src AS SELECT value AS id FROM generate_series(1, 30000)")
        out = {}

        def ctas():
            conn = flightsql.connect(node.uri)
            cur = conn.cursor()
            try:
                # 90 million rows to join and write: long past the timeout, yielding often.
                cur.execute("CREATE TABLE big AS SELECT a.id, b.id AS other FROM src a "
                            "JOIN src b ON a.id % 10 = b.id % 10")
                out["rows"] = cur.fetchall()
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = str(e)
            # The node is gone by now: closing fails, and says nothing of the statement.
            for closing in (cur, conn):
                try:
                    closing.close()
                except Exception:  # noqa: BLE001
                    pass

        writer = threading.Thread(target=ctas)
        writer.start()
        time.sleep(1.5)
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(60)
        writer.join(60)
        assert "cancelled" in out.get("error", "").lower(), out
        assert node.wait_log("cancelled=1")
    finally:
        node.stop()
    again = ApiaryServer(root)
    try:
        with flightsql.connect(again.uri) as conn, conn.cursor() as cur:
            with pytest.raises(Exception, match="does not exist") as missing:
                cur.execute("SELECT * FROM big")
            assert "being created" not in str(missing.value)
            cur.execute("CREATE TABLE big (x INT)")
            cur.execute("SELECT count(*) FROM big")
            assert cur.fetchall() == [(0,)]
    finally:
        again.stop()
