"""The README's HTTP API examples run verbatim against a live portal, apart from host and port.

Every ```sh block of the section "HTTP API", in order, in one bash with `set -euo pipefail`,
from a folder whose `.venv` is this project's: a non-zero exit anywhere fails the test. The
store holds 50,000 demo records (what the portal seeds), so the job example really queues
a job and downloads it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .e2e import harness

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"^## HTTP API\n(.*?)^## ", re.S | re.M)
BLOCK = re.compile(r"^```(?:sh|bash)\n(.*?)^```$", re.S | re.M)
README_PORT = "http://127.0.0.1:8501"


def http_api_blocks() -> list[str]:
    section = SECTION.search((ROOT / "README.md").read_text())
    assert section is not None, "README has no section 'HTTP API'"
    return BLOCK.findall(section.group(1))


def test_the_http_api_examples_run_verbatim(tmp_path: Path) -> None:
    blocks = http_api_blocks()
    assert len(blocks) >= 5
    env = {
        "AUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/audit.db",
        "AUDIT_EXPORT_DIR": str(tmp_path / "exports"),
        "AUDIT_SECRET_KEY": "readme-secret-0123456789abcdef0123456789",
    }
    base_env = {**os.environ, **env}
    demo = [sys.executable, "-m", "audit_core", "demo", "--records", "50000"]
    subprocess.run(demo, cwd=ROOT, env=base_env, check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    port = harness.free_port()
    server = harness.start_streamlit(ROOT, port, env, log_path=tmp_path / "portal.log")
    try:
        script = "set -euo pipefail\n" + "\n".join(blocks)
        script = script.replace(README_PORT, f"http://127.0.0.1:{port}")
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env=base_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        harness.stop_process(server)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "saved audit.csv" in done.stdout, out[-3000:]  # the job ran and was downloaded
    assert done.stdout.rstrip().endswith("304"), out[-3000:]  # If-None-Match with its ETag
