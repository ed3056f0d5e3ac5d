"""Continuous delivery to a folder: contiguous signed segments, resumed after a crash, and
checked by the offline verifier's --segments (which fails on a gap, a duplicate, a flip)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from audit_core import delivery, evidence, offline_verify, signing, store
from audit_core.access import LOCAL_ADMIN
from audit_core.config import ObjectStore, Settings, Timing
from audit_core.models import AUDIT
from audit_core.record import normalize
from audit_core.worker import WorkerThreads

from .conftest import add_demo, seed_record

ROOT = Path(__file__).resolve().parents[1]


def key_file(engine: Engine, tmp_path: Path) -> Path:
    signer = evidence.signer_for(engine)
    assert signer is not None
    path = tmp_path / "portal.pub.pem"
    path.write_bytes(signing.public_pem(signer.key))
    return path


def checks(folder: Path, key: Path) -> list[offline_verify.Check]:
    return list(offline_verify.iter_segment_checks(folder, key))


def failed(found: list[offline_verify.Check]) -> offline_verify.Check | None:
    return next((c for c in found if not c.ok), None)


def tree_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return evidence.read_head(conn).size


def count(engine: Engine, action: str) -> int:
    with engine.connect() as conn:
        stmt = select(func.count()).where(AUDIT.c.action == action)
        return int(conn.execute(stmt).scalar_one())


def test_segments_cover_every_leaf_once_and_verify_offline(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    folder = tmp_path / "out"
    got = delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100)
    # Each segment is a record of its own, delivered with the segments after it.
    assert [(s.first, s.last) for s in got] == [(0, 99), (100, 199), (200, 251)]
    assert count(engine, delivery.ACTION) == 3
    found = checks(folder, key_file(engine, tmp_path))
    assert failed(found) is None, failed(found)
    assert found[-2].name == "segments contiguous" and "leaves 0-251" in found[-2].reason
    assert found[-1].name == "segments tree" and found[-1].ok

    # Only the deliveries' own records are new: nothing to deliver (no segment per run).
    assert delivery.deliver(engine, folder, LOCAL_ADMIN, settings) == []
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n)) for n in range(1, 11)])
    (more,) = delivery.deliver(engine, folder, LOCAL_ADMIN, settings)
    assert (more.first, more.last) == (252, 262)  # the last delivery's record + 10 new
    assert failed(checks(folder, key_file(engine, tmp_path))) is None


def test_a_gap_a_duplicate_or_a_flipped_byte_fails_the_check(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 300)
    folder = tmp_path / "out"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100)
    key = key_file(engine, tmp_path)

    gap = tmp_path / "gap"
    shutil.copytree(folder, gap)
    for path in gap.glob("log-100-199.jsonl.gz*"):
        path.unlink()
    bad = failed(checks(gap, key))
    assert bad is not None and bad.name == "segments contiguous" and "a gap" in bad.reason

    dup = tmp_path / "dup"
    shutil.copytree(folder, dup)
    small = tmp_path / "small"
    delivery.deliver(engine, small, LOCAL_ADMIN, settings, max_records=50)
    for path in small.glob("log-0-49.jsonl.gz*"):
        shutil.copy(path, dup / path.name)  # leaves 0-49 twice
    bad = failed(checks(dup, key))
    assert bad is not None and "overlap or a duplicate" in bad.reason

    flip = tmp_path / "flip"
    shutil.copytree(folder, flip)
    seg = flip / "log-100-199.jsonl.gz"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 1
    seg.write_bytes(bytes(data))
    bad = failed(checks(flip, key))
    assert bad is not None and bad.name.startswith("log-100-199.jsonl.gz: file")


def test_a_crash_mid_segment_is_redone_and_nothing_is_skipped_or_repeated(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 30_000)
    folder = tmp_path / "out"
    key = key_file(engine, tmp_path)
    cmd = [sys.executable, "-m", "audit_core", "deliver", "--to", str(folder)]
    proc = subprocess.Popen(
        [*cmd, "--max-records", "1000"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("*.manifest.sig")) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # wherever it is: writing, signing, renaming
    finally:
        proc.wait()
    done = delivery.complete_segments(folder)
    assert done and done[0][0] == 0
    assert len(done) < 30, "finished before the kill: the test proves nothing"
    rerun = subprocess.run([*cmd, "--max-records", "1000"], cwd=ROOT, env=env, timeout=300)
    assert rerun.returncode == 0
    segments = delivery.complete_segments(folder)
    assert segments[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in zip(segments, segments[1:], strict=False))
    assert segments[-1][1] >= 29_999
    assert not list(folder.glob("*.part"))  # the crashed segment's pieces were replaced
    found = checks(folder, key)
    assert failed(found) is None, failed(found)
    assert found[-1].name == "segments tree" and found[-1].ok


def test_the_verifier_checks_a_folder_alone(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 40)
    folder = tmp_path / "out"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings)
    key = key_file(engine, tmp_path)
    verifier = str(ROOT / "audit_core" / "offline_verify.py")
    good = subprocess.run(
        [sys.executable, "-I", verifier, "--segments", str(folder), "--key", str(key)],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok segments tree" in good.stdout
    both = subprocess.run(
        [sys.executable, "-I", verifier, "x.csv", "--segments", str(folder), "--key", str(key)],
        capture_output=True,
        text=True,
    )
    assert both.returncode == 2 and "one of them" in both.stderr


@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
def test_deliver_refuses_a_bad_period(env: dict[str, str], tmp_path: Path, bad: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "audit_core", "deliver", "--to", str(tmp_path), "--every", bad],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr


def run_schedule(
    engine: Engine, scheduled: Settings, target: Path | ObjectStore, concurrency: int = 1
) -> None:
    """Run worker threads with `scheduled`'s delivery until a segment is complete at target."""
    quick = Timing(poll_seconds=0.05, heartbeat_seconds=0.2)
    handle = WorkerThreads(engine, scheduled, timing=quick, concurrency=concurrency).start()
    try:
        deadline = time.monotonic() + 60
        while not delivery.complete_segments(target) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        handle.stop()


def test_the_worker_delivers_on_its_schedule(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 120)
    folder = tmp_path / "scheduled"
    scheduled = replace(settings, delivery_to=folder, delivery_seconds=3600)
    run_schedule(engine, scheduled, folder)
    assert delivery.complete_segments(folder) == [(0, 119)]
    assert count(engine, delivery.ACTION) == 1
    assert failed(checks(folder, key_file(engine, tmp_path))) is None
