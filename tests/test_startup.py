"""Start-up failures speak plainly: one line naming the setting, a non-zero exit, no traceback.

Each bad setting is tried on the real server (`streamlit run app.py` on a free loopback
port, in a subprocess of its own) and on the command line (`python -m audit_core init`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .e2e import harness

ROOT = Path(__file__).resolve().parents[1]
SECRET = "startup-secret-0123456789abcdef0123456789"
PASSWORD = "pw-must-not-show-7f3a"
SERVER_TIMEOUT = 90.0  # seconds for the server to give up (it imports Streamlit first)


@dataclass(frozen=True)
class Case:
    variable: str  # the setting the one line must name
    env: Callable[[Path], dict[str, str]]  # the settings, given a temporary folder
    hint: str  # a word of what the line says is wrong


def _missing_database(tmp: Path) -> dict[str, str]:
    name = f"audit_missing_{uuid.uuid4().hex[:10]}"
    return {"AUDIT_DATABASE_URL": f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/{name}"}


def _a_file(tmp: Path) -> Path:
    path = tmp / "not-a-folder"
    path.write_text("a file, not a folder\n")
    return path


def _export_dir_under_a_file(tmp: Path) -> dict[str, str]:
    return {"AUDIT_EXPORT_DIR": str(_a_file(tmp) / "exports")}


def _export_dir_under_a_file_no_secret(tmp: Path) -> dict[str, str]:
    # Without AUDIT_SECRET_KEY the link secret is kept beside the export folder too.
    return {"AUDIT_EXPORT_DIR": str(_a_file(tmp) / "exports"), "AUDIT_SECRET_KEY": ""}


def _garbage_key(tmp: Path) -> dict[str, str]:
    key = tmp / "garbage.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key at all\n-----END PRIVATE KEY-----\n")
    return {"AUDIT_SIGNING_KEY_FILE": str(key)}


def _missing_key(tmp: Path) -> dict[str, str]:
    return {"AUDIT_SIGNING_KEY_FILE": str(tmp / "no-such-key.pem")}


CASES = {
    "missing-postgres-database": Case("AUDIT_DATABASE_URL", _missing_database, "database"),
    "export-dir-under-a-file": Case("AUDIT_EXPORT_DIR", _export_dir_under_a_file, "folder"),
    "export-dir-under-a-file-no-secret": Case(
        "AUDIT_EXPORT_DIR", _export_dir_under_a_file_no_secret, "folder"
    ),
    "garbage-key-file": Case("AUDIT_SIGNING_KEY_FILE", _garbage_key, "key"),
    "missing-key-file": Case("AUDIT_SIGNING_KEY_FILE", _missing_key, "does not exist"),
}
CLI_CASES = list(CASES)


def _env(tmp: Path, case: Case) -> dict[str, str]:
    """A complete environment: good settings in tmp, then the case's bad one on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "STREAMLIT_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        AUDIT_DATABASE_URL=f"sqlite:///{tmp / 'audit.db'}",
        AUDIT_EXPORT_DIR=str(tmp / "data" / "exports"),
        AUDIT_SECRET_KEY=SECRET,
    )
    env.update(case.env(tmp))
    return {k: v for k, v in env.items() if v != ""}


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run cmd in a session of its own; (exit status, stdout + stderr). Fails on a timeout."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"still running after {timeout:.0f}s:\n{out.decode(errors='replace')[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
    return proc.returncode, out.decode(errors="replace")


def _check(case: Case, status: int, out: str) -> str:
    """The output names the setting in one 'error:' line, says what is wrong, no traceback."""
    assert status != 0, out
    assert "Traceback" not in out, out
    assert PASSWORD not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    line = errors[0]
    assert case.variable in line, out
    assert case.hint in line.lower(), out
    return line


@pytest.mark.parametrize("name", list(CASES))
def test_the_server_refuses_to_start_with_one_clear_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    port = harness.free_port()
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    status, out = _run(cmd, _env(tmp_path, case), ROOT, SERVER_TIMEOUT)
    _check(case, status, out)
    assert status == 2, out


@pytest.mark.parametrize("name", CLI_CASES)
def test_the_command_line_says_the_same_in_one_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    env = _env(tmp_path, case)
    env["PYTHONPATH"] = str(ROOT)
    status, out = _run([sys.executable, "-m", "audit_core", "init"], env, tmp_path, 60.0)
    _check(case, status, out)
    assert status == 2, out
    assert len(out.strip().splitlines()) == 1, out
