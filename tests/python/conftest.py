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
