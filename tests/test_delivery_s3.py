"""Continuous delivery to S3-compatible object storage, against a real server (SeaweedFS).

The same segments as a folder delivery (byte for byte), uploaded segment, manifest, then
signature; resumed after a SIGKILL at any point with no leaf skipped or repeated; leftovers
of a crashed run (a segment without its signature, unfinished uploads) redone; the worker's
schedule with AUDIT_DELIVERY_TO; and a consumer's check of the downloaded objects with the
offline verifier's --segments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from audit_core import delivery, store
from audit_core.access import LOCAL_ADMIN
from audit_core.config import ObjectStore, Settings
from audit_core.errors import ConfigError
from audit_core.record import normalize
from audit_core.storage import MIN_PART_SIZE, S3Storage

from .conftest import add_demo, seed_record
from .s3_server import REGION, S3Server, running
from .test_delivery import checks, count, failed, key_file, run_schedule, tree_size

pytestmark = pytest.mark.xdist_group("s3")  # one server for the module, on one xdist worker

ROOT = Path(__file__).resolve().parents[1]
VERIFIER = str(ROOT / "audit_core" / "offline_verify.py")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on 127.0.0.1 for this module, stopped at its end."""
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """A fresh prefix of the test bucket to deliver to; the AWS variables set for the client."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"d-{uuid.uuid4().hex[:12]}/audit-log"
    return ObjectStore(s3_server.bucket, prefix, s3_server.endpoint_url, REGION)


@pytest.fixture
def s3_env(env: dict[str, str], s3_server: S3Server) -> dict[str, str]:
    """The environment of a process that reaches the bucket (endpoint and credentials)."""
    return {**env, **s3_server.env(), "AUDIT_S3_ENDPOINT_URL": s3_server.endpoint_url}


# -- what the server holds ----------------------------------------------------------------


def objects(server: S3Server, where: ObjectStore) -> dict[str, bytes]:
    """Every object under the prefix, by name, as the server has it."""
    client, top, found = server.client(), where.prefix + "/", {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=top):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            body = client.get_object(Bucket=where.bucket, Key=key)["Body"].read()
            found[key.removeprefix(top)] = body
    return found


def download(server: S3Server, where: ObjectStore, folder: Path) -> Path:
    """What a consumer does (`aws s3 sync s3://bucket/prefix folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in objects(server, where).items():
        (folder / name).write_bytes(body)
    return folder


def uploads(server: S3Server, where: ObjectStore) -> list[str]:
    """Keys of unfinished multipart uploads under the prefix."""
    found = server.client().list_multipart_uploads(Bucket=where.bucket, Prefix=where.prefix)
    return [u["Key"] for u in found.get("Uploads", [])]


def verify_offline(folder: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", VERIFIER, "--segments", str(folder), "--key", str(key)],
        capture_output=True,
        text=True,
    )


def contiguous(segments: list[tuple[int, int]]) -> bool:
    return all(b[0] == a[1] + 1 for a, b in zip(segments, segments[1:], strict=False))


# -- delivering -----------------------------------------------------------------------------


def test_segments_in_the_bucket_cover_every_leaf_once_and_verify_offline(
    engine: Engine, settings: Settings, s3_server: S3Server, bucket: ObjectStore, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    got = delivery.deliver(engine, bucket, LOCAL_ADMIN, settings, max_records=100)
    assert [(s.first, s.last) for s in got] == [(0, 99), (100, 199), (200, 251)]
    assert count(engine, delivery.ACTION) == 3  # each segment is a record of its own
    held = objects(s3_server, bucket)
    assert sorted(held) == sorted(
        f"{s.name}{suffix}" for s in got for suffix in ("", ".manifest.json", ".manifest.sig")
    )
    assert delivery.complete_segments(bucket) == [(0, 99), (100, 199), (200, 251)]
    assert uploads(s3_server, bucket) == []

    # The same bytes as a folder delivery of the same leaves (deterministic gzip).
    folder = tmp_path / "folder"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100)
    for name in ("log-0-99.jsonl.gz", "log-100-199.jsonl.gz"):
        assert held[name] == (folder / name).read_bytes()

    key = key_file(engine, tmp_path)
    local = download(s3_server, bucket, tmp_path / "downloaded")
    found = checks(local, key)
    assert failed(found) is None, failed(found)
    assert "leaves 0-251" in found[-2].reason and found[-1].name == "segments tree"
    done = verify_offline(local, key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok segments tree" in done.stdout

    # Nothing but the deliveries' own records: nothing to deliver; then 10 new records.
    assert delivery.deliver(engine, bucket, LOCAL_ADMIN, settings) == []
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n)) for n in range(1, 11)])
    size = tree_size(engine)  # the folder's deliveries were recorded too
    (more,) = delivery.deliver(engine, bucket, LOCAL_ADMIN, settings)
    assert (more.first, more.last) == (252, size - 1)
    local = download(s3_server, bucket, tmp_path / "again")
    assert failed(checks(local, key)) is None


def test_a_sigkilled_delivery_resumes_with_no_leaf_skipped_or_repeated(
    engine: Engine, s3_server: S3Server, bucket: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 30_000)
    cmd = [sys.executable, "-m", "audit_core", "deliver", "--to", bucket.url, "--max-records"]
    rng = random.Random(17)
    killed_at = []
    for wanted in (1, 8):  # killed twice, at random moments after some segments completed
        proc = subprocess.Popen(
            [*cmd, "1000"], cwd=ROOT, env=s3_env, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if len(delivery.complete_segments(bucket)) >= wanted:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.15))  # writing, uploading, signing, or recording
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, "finished before the kill: proves nothing"
        done = delivery.complete_segments(bucket)
        killed_at.append(done)
        assert done[0][0] == 0 and contiguous(done)
    assert len(killed_at[-1]) < 30, "finished before the kill: the test proves nothing"

    rerun = subprocess.run(
        [*cmd, "1000"], cwd=ROOT, env=s3_env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    segments = delivery.complete_segments(bucket)
    assert segments[0][0] == 0 and contiguous(segments)
    assert segments[-1][1] >= 29_999
    names = set(objects(s3_server, bucket))
    assert len(names) == 3 * len(segments)  # no leftover of a killed run, no duplicate
    assert uploads(s3_server, bucket) == []  # unfinished uploads were aborted
    key = key_file(engine, tmp_path)
    local = download(s3_server, bucket, tmp_path / "downloaded")
    found = checks(local, key)
    assert failed(found) is None, failed(found)
    assert found[-1].name == "segments tree" and found[-1].ok
    assert verify_offline(local, key).returncode == 0


def test_a_leftover_incomplete_segment_and_unfinished_uploads_are_redone(
    engine: Engine, settings: Settings, s3_server: S3Server, bucket: ObjectStore, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    delivery.deliver(engine, bucket, LOCAL_ADMIN, settings, max_records=100)
    client = s3_server.client()
    # A crash after the last segment and its manifest went up, before its signature; a
    # segment of another range begun by a later crashed run; an upload never completed.
    client.delete_object(Bucket=bucket.bucket, Key=bucket.key("log-200-251.jsonl.gz.manifest.sig"))
    client.put_object(Bucket=bucket.bucket, Key=bucket.key("log-252-400.jsonl.gz"), Body=b"half")
    client.create_multipart_upload(Bucket=bucket.bucket, Key=bucket.key("log-252-400.jsonl.gz"))
    # Not ours: an upload of another name under the prefix is left alone.
    other = client.create_multipart_upload(Bucket=bucket.bucket, Key=bucket.key("notes.txt"))
    assert delivery.complete_segments(bucket)[-1] == (100, 199)  # the next leaf is 200

    size = tree_size(engine)
    (redone,) = delivery.deliver(engine, bucket, LOCAL_ADMIN, settings, max_records=100)
    assert (redone.first, redone.last) == (200, size - 1)  # leaves 200.. again, and more
    names = set(objects(s3_server, bucket))
    assert "log-200-251.jsonl.gz" not in names and "log-252-400.jsonl.gz" not in names
    assert delivery.complete_segments(bucket) == [(0, 99), (100, 199), (200, size - 1)]
    assert uploads(s3_server, bucket) == [bucket.key("notes.txt")]
    client.abort_multipart_upload(
        Bucket=bucket.bucket, Key=bucket.key("notes.txt"), UploadId=other["UploadId"]
    )
    local = download(s3_server, bucket, tmp_path / "downloaded")
    found = checks(local, key_file(engine, tmp_path))
    assert failed(found) is None, failed(found)


def test_one_delivery_at_a_time_per_destination(
    engine: Engine, settings: Settings, bucket: ObjectStore
) -> None:
    add_demo(engine, 20)
    dest = delivery.destination(bucket)
    # Another process's delivery holds the database's lock (another connection/file).
    with delivery._database_lock(engine, dest.label) as held:
        assert held
        with pytest.raises(delivery.DeliveryBusyError):
            delivery.deliver(engine, bucket, LOCAL_ADMIN, settings)
    assert [(s.first, s.last) for s in delivery.deliver(engine, bucket, LOCAL_ADMIN, settings)] == [
        (0, 19)
    ]


def test_large_files_stream_as_multipart_and_small_ones_go_in_one_put(
    s3_server: S3Server, bucket: ObjectStore
) -> None:
    objects_ = S3Storage(bucket, part_size=MIN_PART_SIZE)
    chunk = os.urandom(256 * 1024)
    pieces = 6 * MIN_PART_SIZE // len(chunk) + 3
    big = objects_.open_upload("log-0-9.jsonl.gz")
    tracemalloc.start()
    try:
        for _ in range(pieces):
            big.write(chunk)
        big.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MIN_PART_SIZE, peak  # about one part in hand, not the file's 31 MiB
    assert uploads(s3_server, bucket) == [bucket.key("log-0-9.jsonl.gz")]
    assert "log-0-9.jsonl.gz" not in objects_.names()  # invisible until published
    big.publish()
    big.discard()  # a no-op once published
    assert objects_.size("log-0-9.jsonl.gz") == pieces * len(chunk)
    small = objects_.open_upload("log-10-19.jsonl.gz")
    small.write(b"tiny")
    small.finish()
    assert uploads(s3_server, bucket) == []  # no upload made for a small file
    small.publish()
    assert sorted(objects_.names()) == ["log-0-9.jsonl.gz", "log-10-19.jsonl.gz"]
    dropped = objects_.open_upload("log-20-29.jsonl.gz")
    for _ in range(MIN_PART_SIZE // len(chunk) + 1):
        dropped.write(chunk)
    dropped.discard()
    assert uploads(s3_server, bucket) == [] and "log-20-29.jsonl.gz" not in objects_.names()


# -- the worker's schedule and the settings -------------------------------------------------


def test_the_worker_delivers_to_the_bucket_on_its_schedule(
    engine: Engine, settings: Settings, s3_server: S3Server, bucket: ObjectStore, tmp_path: Path
) -> None:
    assert bucket.endpoint_url is not None
    env = {
        "AUDIT_DELIVERY_TO": bucket.url,
        "AUDIT_S3_ENDPOINT_URL": bucket.endpoint_url,
        "AWS_REGION": REGION,
        "AUDIT_SECRET_KEY": settings.secret_key,
        "AUDIT_EXPORT_DIR": str(settings.export_dir),
    }
    from_env = Settings.from_env(env)
    assert from_env.delivery_to == bucket
    add_demo(engine, 120)
    scheduled = replace(settings, delivery_to=from_env.delivery_to, delivery_seconds=3600)
    run_schedule(engine, scheduled, bucket, concurrency=2)
    assert delivery.complete_segments(bucket) == [(0, 119)]
    assert count(engine, delivery.ACTION) == 1  # two worker threads, one delivery
    local = download(s3_server, bucket, tmp_path / "downloaded")
    assert failed(checks(local, key_file(engine, tmp_path))) is None


def test_delivery_settings(tmp_path: Path) -> None:
    base = {"AUDIT_SECRET_KEY": "k", "AUDIT_EXPORT_DIR": str(tmp_path / "exports")}
    to_bucket = Settings.from_env(
        {
            **base,
            "AUDIT_DELIVERY_TO": "s3://audit-log/portal/deliveries/",
            "AUDIT_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
    )
    assert to_bucket.delivery_to == ObjectStore(
        "audit-log", "portal/deliveries", "http://127.0.0.1:8333", "eu-west-1"
    )
    assert to_bucket.export_storage is None  # the endpoint may serve deliveries alone
    folder = str(tmp_path / "out")
    to_folder = Settings.from_env({**base, "AUDIT_DELIVERY_TO": folder})
    assert to_folder.delivery_to == Path(folder)
    old_name = Settings.from_env({**base, "AUDIT_DELIVERY_DIR": folder})
    assert old_name.delivery_to == Path(folder)
    same = Settings.from_env({**base, "AUDIT_DELIVERY_TO": folder, "AUDIT_DELIVERY_DIR": folder})
    assert same.delivery_to == Path(folder)
    assert Settings.from_env(base).delivery_to is None
    cli = Settings.from_env({**base, "AUDIT_DELIVERY_TO": "gs://x"}, delivery_to="s3://abc/p")
    assert cli.delivery_to == ObjectStore("abc", "p")  # --to replaces the variables


@pytest.mark.parametrize(
    ("env", "name", "said"),
    [
        ({"AUDIT_DELIVERY_TO": "gs://bucket/x"}, "AUDIT_DELIVERY_TO", "must be a folder or s3://"),
        ({"AUDIT_DELIVERY_TO": "s3:/bucket/x"}, "AUDIT_DELIVERY_TO", "must be a folder or s3://"),
        ({"AUDIT_DELIVERY_TO": "s3://"}, "AUDIT_DELIVERY_TO", "must be a folder or s3://"),
        ({"AUDIT_DELIVERY_TO": "s3://b?x=1"}, "AUDIT_DELIVERY_TO", "must be a folder or s3://"),
        ({"AUDIT_DELIVERY_TO": "s3://Audit_Log"}, "AUDIT_DELIVERY_TO", "bucket name"),
        ({"AUDIT_DELIVERY_TO": "s3://abc/../b"}, "AUDIT_DELIVERY_TO", "prefix"),
        (
            {"AUDIT_DELIVERY_TO": "s3://abc/p", "AUDIT_DELIVERY_DIR": "out"},
            "AUDIT_DELIVERY_TO",
            "different places",
        ),
        (
            {"AUDIT_DELIVERY_TO": "/srv/a", "AUDIT_DELIVERY_DIR": "/srv/b"},
            "AUDIT_DELIVERY_TO",
            "different places",
        ),
        (
            {"AUDIT_DELIVERY_TO": "/srv/a", "AUDIT_S3_ENDPOINT_URL": "http://127.0.0.1:8333"},
            "AUDIT_S3_ENDPOINT_URL",
            "is set",
        ),
        (
            {"AUDIT_DELIVERY_TO": "s3://abc", "AUDIT_S3_ENDPOINT_URL": "http://u:pw9@h:1"},
            "AUDIT_S3_ENDPOINT_URL",
            "must not carry credentials",
        ),
    ],
)
def test_bad_delivery_settings_are_named_in_one_line(
    env: dict[str, str], name: str, said: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "AUDIT_SECRET_KEY": "k", "AUDIT_EXPORT_DIR": str(tmp_path)})
    message = caught.value.message
    assert message.startswith(name) and said in message and "\n" not in message, message
    assert "pw9" not in message


def test_the_worker_and_deliver_refuse_a_bad_destination_in_one_line(
    s3_env: dict[str, str], s3_server: S3Server
) -> None:
    bad_url = {**s3_env, "AUDIT_DELIVERY_TO": "ftp://example.com/log"}
    no_bucket = {**s3_env, "AUDIT_DELIVERY_TO": f"s3://no-such-{uuid.uuid4().hex[:8]}/log"}
    runs = [
        (["worker"], bad_url, "AUDIT_DELIVERY_TO must be a folder or s3://"),
        (["worker"], no_bucket, "AUDIT_DELIVERY_TO s3://no-such-"),
        (["deliver", "--to", "s3://Bad_Bucket"], s3_env, "--to: 'Bad_Bucket' is not an S3"),
        (["deliver", "--to", no_bucket["AUDIT_DELIVERY_TO"]], s3_env, "--to s3://no-such-"),
    ]
    for args, env, said in runs:
        done = subprocess.run(
            [sys.executable, "-m", "audit_core", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and said in lines[0], lines[0]
