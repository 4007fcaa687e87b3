"""A local swarm: SeaweedFS (S3) on loopback, one bucket, N `apiary serve` nodes sharing it.

Started by deploy/local-swarm (which provides the venv and $APIARY_BIN). Prints each node's
Flight URL and status page once every node sees all the others, then a line `READY`; stops
everything on SIGINT or SIGTERM.
"""

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BUCKET = "apiary"


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def seaweed_ports():
    """Five ports (s3, master, filer, volume, admin) whose gRPC twins (+10000) are free too."""
    for _ in range(200):
        base = random.randrange(20000, 40000, 8)
        ports = [base + i for i in range(5)]
        if all(free(p) and free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for SeaweedFS")


def weed_mini(weed, data_dir, bucket, ports):
    """The `weed mini` command line: SeaweedFS on loopback with one bucket, on `seaweed_ports()`."""
    s3, master, filer, volume, admin = ports
    return [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={bucket}",
        f"-s3.port={s3}", f"-master.port={master}", f"-filer.port={filer}",
        f"-volume.port={volume}", f"-admin.port={admin}",
    ]


class Proc:
    """A child process whose stderr is kept (and searched for a line)."""

    def __init__(self, name, cmd, env, log_path):
        self.name = name
        self.lines = []
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            self.log.write(line)
            self.log.flush()

    def find(self, needle, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {needle!r} in its log:\n" + "".join(self.lines[-30:]))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--dir", help="working directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory afterwards")
    ap.add_argument("--user", default="apiary")
    ap.add_argument("--password", default=os.environ.get("APIARY_LOCAL_PASSWORD", "apiary"))
    ap.add_argument("--heartbeat", default="1s", help="heartbeat interval of the nodes")
    ap.add_argument("--memory", default="1GiB", help="memory budget of each node")
    ap.add_argument("--ready-timeout", type=float, default=120)
    args = ap.parse_args()

    apiary = os.environ["APIARY_BIN"]
    weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    work = args.dir or tempfile.mkdtemp(prefix="apiary-swarm-")
    os.makedirs(work, exist_ok=True)
    procs = []
    stopping = threading.Event()

    def stop_all(code):
        stopping.set()
        # Nodes first (they leave the swarm cleanly), the store last.
        for p in reversed(procs):
            if p.name != "seaweedfs":
                p.stop(45)
        for p in procs:
            if p.name == "seaweedfs":
                p.stop(15)
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        print("stopped", flush=True)
        sys.exit(code)

    signal.signal(signal.SIGTERM, lambda *_: stop_all(0))
    signal.signal(signal.SIGINT, lambda *_: stop_all(0))

    try:
        key_id, secret = "apiary", secrets.token_hex(16)
        ports = seaweed_ports()
        s3 = ports[0]
        weed_env = dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
        os.makedirs(f"{work}/seaweedfs", exist_ok=True)
        store = Proc(
            "seaweedfs",
            weed_mini(weed, f"{work}/seaweedfs", BUCKET, ports),
            weed_env,
            f"{work}/seaweedfs.log",
        )
        procs.append(store)
        endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.time() + 60
        while True:
            try:
                # Any HTTP answer (403 for an anonymous request) means S3 is up.
                urllib.request.urlopen(f"{endpoint}/{BUCKET}", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline or not store.alive():
                    raise RuntimeError("SeaweedFS did not start:\n" + "".join(store.lines[-30:]))
                time.sleep(0.2)

        hashed = subprocess.run(
            [apiary, "hash-password"], input=args.password + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        token_secret = secrets.token_hex(24)
        nodes = []
        for i in range(1, args.nodes + 1):
            node_id = f"local-{i}"
            env = dict(
                os.environ,
                APIARY_STORAGE=f"s3://{BUCKET}/swarm",
                APIARY_S3_ENDPOINT=endpoint,
                APIARY_S3_REGION="us-east-1",
                APIARY_S3_ACCESS_KEY_ID=key_id,
                APIARY_S3_SECRET_ACCESS_KEY=secret,
                APIARY_USERS=f"{args.user}:{hashed}",
                APIARY_TOKEN_SECRET=token_secret,
                APIARY_NODE_ID=node_id,
                APIARY_LISTEN="127.0.0.1:0",
                APIARY_METRICS_LISTEN="127.0.0.1:0",
                APIARY_HEARTBEAT_INTERVAL=args.heartbeat,
                APIARY_MEMORY=args.memory,
                APIARY_SCRATCH_DIR=f"{work}/{node_id}/scratch",
                APIARY_CACHE_DIR=f"{work}/{node_id}/cache",
                APIARY_LOG=os.environ.get("APIARY_LOG", "info,buoyant_kernel=warn,deltalake_core=warn"),
                # The URLs are read from the text log lines, whatever the caller's environment says.
                APIARY_LOG_FORMAT="text",
            )
            p = Proc(node_id, [apiary, "serve"], env, f"{work}/{node_id}.log")
            procs.append(p)
            nodes.append(p)
        urls = []
        for p in nodes:
            flight = p.find("listening on ", 60).split("listening on ", 1)[1].split()[0]
            status = p.find("status page on ", 60).split("status page on ", 1)[1].split()[0].rstrip(")")
            urls.append((p.name, flight, status))

        # Ready when every node sees every node alive.
        deadline = time.time() + args.ready_timeout
        while True:
            seen = []
            for _, _, status in urls:
                try:
                    st = get_json(status + "status.json")
                    seen.append(sum(1 for n in st["swarm"] if n["state"] == "alive"))
                except OSError:
                    seen.append(0)
            if all(n == args.nodes for n in seen):
                break
            dead = [p.name for p in procs if not p.alive()]
            if dead or time.time() > deadline:
                raise RuntimeError(f"swarm not ready (alive as seen by each node: {seen}; exited: {dead})")
            time.sleep(0.3)

        print(f"Apiary local swarm: {args.nodes} nodes on s3://{BUCKET}/swarm at {endpoint} (SeaweedFS)")
        for name, flight, status in urls:
            print(f"  {name}  flight {flight}  status {status}")
        print(f"  user {args.user}, password {args.password}; logs and data in {work}")
        print("Ctrl-C stops everything.")
        print("READY", flush=True)
        while not stopping.is_set():
            dead = [p.name for p in procs if not p.alive()]
            if dead:
                print(f"exited unexpectedly: {', '.join(dead)}", file=sys.stderr, flush=True)
                stop_all(1)
            time.sleep(0.5)
    except Exception as e:  # noqa: BLE001 - report, clean up, fail
        print(f"local-swarm: {e}", file=sys.stderr, flush=True)
        stop_all(1)


if __name__ == "__main__":
    main()
