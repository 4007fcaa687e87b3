"""Fixtures shared by the Python tests: the apiary binary, one-shot SQL, and servers."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def apiary_bin() -> str:
    explicit = os.environ.get("APIARY_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(pathlib.Path.home() / ".cache/apiary/target"))
    return str(pathlib.Path(target) / "debug" / "apiary")


def run_sql(storage: str, query: str, fmt: str = "csv", env=None) -> str:
    """Run `apiary sql` and return stdout; raise with stderr on failure."""
    full_env = dict(os.environ, APIARY_LOG="warn")
    full_env.update(env or {})
    proc = subprocess.run(
        [apiary_bin(), "sql", "--storage", storage, "--format", fmt, query],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"apiary sql failed: {proc.stderr}")
    return proc.stdout


@pytest.fixture
def storage(tmp_path):
    """A fresh local storage root."""
    return str(tmp_path / "root")


class ApiaryServer:
    """A running `apiary serve` on 127.0.0.1 with an OS-assigned port."""

    def __init__(self, storage: str, args=(), env=None):
        import threading
        import time

        full_env = dict(os.environ, APIARY_LOG="info,buoyant_kernel=warn,deltalake_core=warn")
        full_env.update(env or {})
        cmd = [apiary_bin(), "serve", "--storage", storage]
        if "--listen" not in args:
            cmd += ["--listen", "127.0.0.1:0"]
        cmd += list(args)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=full_env)
        self.log_lines = []
        self.addr = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log_lines.append(line)
                if self.addr is None and "listening on " in line:
                    rest = line.split("listening on ", 1)[1].split()[0]
                    self.addr = rest.split("://", 1)[1]
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or self.addr is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log_lines))
        self._time = time

    @property
    def uri(self) -> str:
        return f"grpc://{self.addr}"

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def wait_log(self, needle: str, timeout: float = 15.0) -> bool:
        deadline = self._time.time() + timeout
        while self._time.time() < deadline:
            if needle in self.log:
                return True
            self._time.sleep(0.05)
        return False

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def hash_password(password: str) -> str:
    out = subprocess.run([apiary_bin(), "hash-password"], input=password + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def server(tmp_path):
    s = ApiaryServer(str(tmp_path / "root"))
    yield s
    s.stop()


@pytest.fixture
def auth_server(tmp_path):
    s = ApiaryServer(str(tmp_path / "root"), args=["--user", "alice:" + hash_password("s3cret pass")])
    yield s
    s.stop()
