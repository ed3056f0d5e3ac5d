"""Every shell block of the README runs verbatim against a live portal, apart from host and port.

The README's fenced blocks are read in order and grouped by their `## ` section. A section's
shell blocks run in one bash with `set -euo pipefail`, in a folder of their own laid out like
a clone (`.venv` and `audit_core` link to this project's), against a store of 50,000 demo
records (what the portal seeds) served by `streamlit run app.py` on a free port: a non-zero
exit anywhere fails the section. A block marked `<!-- readme-test: until-stopped -->` runs one
command at a time: each must still be running once it has spoken and exit 0 on SIGTERM. A block
marked `<!-- readme-test: skip, <why> -->` is not run; SKIPPED is exactly the set of them, so a
new block cannot slip out of the test unnoticed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .e2e import harness

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_BASE = "http://127.0.0.1:8501"
SHELL = frozenset({"sh", "bash", "shell", "console", "zsh"})
NOT_SHELL = frozenset({"json", "sql"})
MARK = re.compile(r"<!-- readme-test: (.+?) -->")
UNTIL_STOPPED = "until-stopped"

# The blocks a test cannot run, by (section, first command), with the README marker's reason.
SKIPPED = {
    ("The two commands", "scripts/portal"): (
        "skip, starts the portal until stopped and runs the whole test suite"
    ),
    ("Object storage", "export AUDIT_EXPORT_STORAGE=s3://audit-exports/portal"): (
        "skip, needs an S3-compatible bucket and its credentials"
    ),
    (
        "Object storage",
        'curl -sS -L -o audit.csv "$BASE/audit/export/download/export-20260319-001" \\',
    ): "skip, needs a portal whose job files are in a bucket",
}
# The blocks of commands that serve until stopped, run one command at a time.
SERVING = {("Command line", ".venv/bin/python -m audit_core worker --concurrency 2")}
# What a section's output must show besides a zero exit: the examples did their work.
SHOWS = {
    "HTTP API": ("saved audit.csv",),  # the job ran and its file was downloaded
    "Proving an export": (
        "ok consistency: tree",
        "ok inclusion proof:",
        "Signature Verified Successfully",
    ),
    "Delivering the log": ("ok segments tree:",),
    "Command line": ("database ready", "added 20000 demo records", "already stored", "revoked"),
}
# What a section's last line of output must be: here If-None-Match with the file's ETag.
ENDS = {"HTTP API": "304"}

pytestmark = pytest.mark.xdist_group("readme")  # one portal for the module, on one xdist worker


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its section, language, text and test marker."""

    section: str
    lang: str
    text: str
    mark: str

    @property
    def first(self) -> str:
        """The block's first line without its comment."""
        return re.sub(r"\s+#.*$", "", self.text.splitlines()[0]).strip()


def readme_blocks() -> list[Block]:
    """Read the README's fenced blocks in order; a marker must sit right above its block."""
    lines = README.read_text().splitlines()
    blocks: list[Block] = []
    section, mark, i = "", "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = lines.index("```", i + 1)
            body = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(section, line[3:].strip(), body, mark))
            mark, i = "", end + 1
            continue
        found = MARK.fullmatch(line.strip())
        if found:
            mark = found.group(1)
        elif line.strip() and mark:
            raise AssertionError(f"README line {i + 1}: marker {mark!r} is not above a block")
        if line.startswith("## "):
            section = line[3:].strip()
        i += 1
    return blocks


def shell_blocks(mark: str | None = None) -> list[Block]:
    """The shell blocks, all of them or only those with `mark`."""
    found = [b for b in readme_blocks() if b.lang in SHELL]
    return found if mark is None else [b for b in found if b.mark == mark]


def run_sections() -> list[str]:
    """The sections with blocks to run, in README order."""
    names = [b.section for b in shell_blocks() if not b.mark.startswith("skip")]
    return list(dict.fromkeys(names))


def test_every_fenced_block_says_whether_it_is_shell() -> None:
    langs = {b.lang for b in readme_blocks()}
    assert langs <= SHELL | NOT_SHELL, f"unknown fence languages: {langs - SHELL - NOT_SHELL}"
    assert len(shell_blocks()) >= 10


def test_only_the_named_blocks_are_left_out() -> None:
    marked = {(b.section, b.first): b.mark for b in shell_blocks() if b.mark.startswith("skip")}
    assert marked == SKIPPED
    serving = {(b.section, b.first) for b in shell_blocks(UNTIL_STOPPED)}
    assert serving == SERVING
    others = {b.mark for b in shell_blocks()} - {"", UNTIL_STOPPED} - set(SKIPPED.values())
    assert not others, f"unknown readme-test markers: {others}"
    assert set(SHOWS) | set(ENDS) <= set(run_sections())


@dataclass(frozen=True)
class Portal:
    """A live portal on a free port and the environment its examples run with."""

    port: int
    env: dict[str, str]
    scratch: Path
    log: Path


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """Serve 50,000 demo records with `streamlit run app.py` on a free port."""
    tmp = tmp_path_factory.mktemp("readme")
    env = {
        "AUDIT_DATABASE_URL": f"sqlite:///{tmp}/audit.db",
        "AUDIT_EXPORT_DIR": str(tmp / "exports"),
        "AUDIT_SECRET_KEY": "readme-secret-0123456789abcdef0123456789",
    }
    full = {**os.environ, **env}
    demo = [sys.executable, "-m", "audit_core", "demo", "--records", "50000"]
    subprocess.run(demo, cwd=ROOT, env=full, check=True, capture_output=True, timeout=300)
    port, log = harness.free_port(), tmp / "portal.log"
    server = harness.start_streamlit(ROOT, port, env, log_path=log)
    try:
        yield Portal(port, full, tmp, log)
    finally:
        harness.stop_process(server)


def clone_like(portal: Portal, section: str) -> Path:
    """A fresh working folder for one section, with the clone's `.venv` and `audit_core`."""
    work = portal.scratch / re.sub(r"\W+", "-", section.lower())
    work.mkdir()
    for name in (".venv", "audit_core"):
        (work / name).symlink_to(ROOT / name)
    return work


def on_port(text: str, portal: Portal) -> str:
    """The README's text with the portal's real port in place of 8501."""
    return text.replace(README_BASE, f"http://127.0.0.1:{portal.port}")


def run_until_stopped(command: str, work: Path, portal: Portal) -> str:
    """Start one serving command, check it runs, SIGTERM it, and expect exit status 0."""
    log = work / f"serving-{time.monotonic_ns()}.log"
    proc = harness.start_process(["bash", "-c", command], portal.env, work, log)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and not log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # it has spoken: still serving a moment later?
        assert proc.poll() is None, f"{command!r} stopped by itself:\n{harness.log_tail(proc)}"
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        harness.stop_process(proc)
    output = log.read_text()
    assert code == 0, f"{command!r} exited {code} on SIGTERM:\n{output[-3000:]}"
    return output


@pytest.mark.parametrize("section", run_sections())
def test_the_readme_section_runs_verbatim(section: str, portal: Portal) -> None:
    work = clone_like(portal, section)
    blocks = [b for b in shell_blocks() if b.section == section and not b.mark]
    script = on_port("set -euo pipefail\n" + "".join(b.text for b in blocks), portal)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=portal.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr
    failed = f"{out[-4000:]}\n--- portal log ---\n{harness.log_tail(portal.log)}"
    assert done.returncode == 0, failed
    for block in shell_blocks(UNTIL_STOPPED):
        if block.section == section:
            for command in block.text.splitlines():
                out += run_until_stopped(on_port(command, portal), work, portal)
    for expected in SHOWS.get(section, ()):
        assert expected in out, f"no {expected!r} in the output:\n{failed}"
    if section in ENDS:
        assert done.stdout.rstrip().endswith(ENDS[section]), failed
