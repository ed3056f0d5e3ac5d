"""A filtered delivery (`deliver --action/--user/--namespace`, AUDIT_DELIVERY_FILTER): the same
contiguous leaf ranges as an unfiltered one, each segment holding exactly the matching records
of its range, its manifest stating the filter; checked by the offline verifier's --segments
(every record against the stated filter, no Merkle root: it needs every leaf); one filter per
destination; and the setting's errors, one line each."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from audit_core import delivery, evidence, offline_verify, signing, store
from audit_core.access import LOCAL_ADMIN
from audit_core.config import ObjectStore, Settings, Timing
from audit_core.errors import ConfigError
from audit_core.filters import AuditFilter
from audit_core.models import AUDIT, MANIFESTS
from audit_core.record import compute_checksum, normalize
from audit_core.worker import WorkerThreads

from .conftest import add_demo, seed_record
from .s3_server import REGION, S3Server, running
from .test_delivery import checks, count, failed, key_file, run_schedule

ROOT = Path(__file__).resolve().parents[1]
VERIFIER = str(ROOT / "audit_core" / "offline_verify.py")
FILTER = AuditFilter.parse(action="user.*,incident.create", namespace="production,payments")


def records(path: Path) -> list[dict[str, str]]:
    """The records of a segment file, in order."""
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def manifest(path: Path) -> dict[str, object]:
    return json.loads(Path(f"{path}.manifest.json").read_bytes())


def matching_ids(engine: Engine, flt: AuditFilter, first: int, last: int) -> list[str]:
    """What the database's own filter (the SQL an export runs) selects of leaves first..last."""
    with engine.connect() as conn:
        stmt = (
            select(AUDIT.c.id)
            .where(AUDIT.c.leaf >= first, AUDIT.c.leaf <= last, flt.clause(AUDIT))
            .order_by(AUDIT.c.leaf)
        )
        return list(conn.execute(stmt).scalars())


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def verify_offline(folder: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", VERIFIER, "--segments", str(folder), "--key", str(key)],
        capture_output=True,
        text=True,
    )


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A process environment that touches nothing outside tmp_path (no database is opened)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(
        AUDIT_DATABASE_URL=f"sqlite:///{tmp_path}/none.db",
        AUDIT_EXPORT_DIR=str(tmp_path / "exports"),
        AUDIT_SECRET_KEY="test-secret-key-0123456789abcdef0123456789",
        **extra,
    )
    return env


# -- the bucket (SeaweedFS on loopback, one server for this module) ------------------------------


@pytest.fixture(scope="module")
def _s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(
    _s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[S3Server, ObjectStore]:
    for name, value in _s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"f-{uuid.uuid4().hex[:12]}/audit-log"
    return _s3_server, ObjectStore(_s3_server.bucket, prefix, _s3_server.endpoint_url, REGION)


# -- what a filtered delivery holds -------------------------------------------------------------


def test_a_filtered_delivery_holds_exactly_the_matching_records_of_every_range(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    folder = tmp_path / "out"
    got = delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    # The same ranges, cut at the same leaves, as an unfiltered delivery.
    assert [(s.first, s.last) for s in got] == [(0, 99), (100, 199), (200, 251)]
    total = 0
    for seg in got:
        path = folder / seg.name
        held = records(path)
        want = matching_ids(engine, FILTER, seg.first, seg.last)
        assert [r["id"] for r in held] == want and seg.count == len(want)
        assert all(r["checksum"] == compute_checksum(r) for r in held)
        doc = manifest(path)
        assert doc["query"] == {
            "from": None,
            "to": doc["query"]["to"],  # type: ignore[index]
            "action": ["incident.create", "user.*"],
            "user": [],
            "namespace": ["payments", "production"],
            "format": "jsonl",
            "description": f"delivery of leaves {seg.first}-{seg.last}, the records matching "
            "action=incident.create,user.*&namespace=payments,production",
        }
        assert doc["records"] == {
            "count": len(want),
            "firstId": want[0] if want else None,
            "lastId": want[-1] if want else None,
            "firstLeaf": seg.first,
            "lastLeaf": seg.last,
        }
        assert doc["snapshot"]["treeSize"] == seg.last + 1  # type: ignore[index]
        total += len(want)
    assert 0 < total < 252, "the filter must keep some records and drop others"

    # Each segment is a portal.deliver record naming the filter; the manifests chain.
    with engine.connect() as conn:
        resources = list(
            conn.execute(select(AUDIT.c.resource).where(AUDIT.c.action == delivery.ACTION))
            .scalars()
            .all()
        )
        kept = conn.execute(select(func.count()).select_from(MANIFESTS)).scalar_one()
    assert len(resources) == 3 and kept == 3
    assert all("matching action=incident.create,user.*&namespace=" in r for r in resources)

    key = key_file(engine, tmp_path)
    found = checks(folder, key)
    assert failed(found) is None, failed(found)
    assert [c.name for c in found if "records match filter" in c.name] == [
        f"{s.name}: records match filter" for s in got
    ]
    assert found[-3].name == "segments contiguous" and "leaves 0-251" in found[-3].reason
    assert found[-2].name == "segments filter"
    assert found[-1].name == "segments tree" and found[-1].reason.startswith("not checked")
    assert "rests on the portal's signature" in found[-1].reason
    assert "python -m audit_core prove ID" in found[-1].reason
    done = verify_offline(folder, key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok segments tree: not checked" in done.stdout

    # What the verifier cannot prove of the folder, it proves of any record: inclusion.
    seg = folder / "log-100-199.jsonl.gz"
    one = records(seg)[0]["id"]
    with engine.begin() as conn:
        (tmp_path / "proof.json").write_text(json.dumps(evidence.inclusion(conn, one)))
    proved = list(offline_verify.iter_checks(seg, None, None, key, tmp_path / "proof.json"))
    assert failed(proved) is None, failed(proved)
    assert proved[-1].name == "inclusion proof" and one in proved[-1].reason

    # Resumed exactly as unfiltered: only deliveries new, nothing; then 10 new records.
    assert delivery.deliver(engine, folder, LOCAL_ADMIN, settings, flt=FILTER) == []
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n, action="user.login")) for n in range(1, 11)])
    (more,) = delivery.deliver(engine, folder, LOCAL_ADMIN, settings, flt=FILTER)
    assert (more.first, more.last) == (252, 262)  # the last delivery's record + 10 new
    held = [r["id"] for r in records(folder / more.name)]
    assert held == matching_ids(engine, FILTER, 252, 262)
    assert len(held) == 10  # user.login in production: the new records, not the delivery
    assert failed(checks(folder, key)) is None


def test_a_range_with_no_matching_record_is_an_empty_segment_that_verifies(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 120)
    folder = tmp_path / "out"
    nowhere = AuditFilter.parse(namespace="no-such-namespace")
    got = delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=50, flt=nowhere)
    assert [(s.first, s.last, s.count) for s in got] == [(0, 49, 0), (50, 99, 0), (100, 121, 0)]
    for seg in got:
        path = folder / seg.name
        assert gzip.decompress(path.read_bytes()) == b""  # a whole, empty gzip stream
        assert manifest(path)["records"] == {
            "count": 0,
            "firstId": None,
            "lastId": None,
            "firstLeaf": seg.first,
            "lastLeaf": seg.last,
        }
    found = checks(folder, key_file(engine, tmp_path))
    assert failed(found) is None, failed(found)
    assert "leaves 0-121" in found[-3].reason
    # As unfiltered: a range of nothing but deliveries is not delivered.
    assert delivery.deliver(engine, folder, LOCAL_ADMIN, settings, flt=nowhere) == []


@pytest.mark.xdist_group("s3")  # SeaweedFS tests share one xdist worker
def test_a_filtered_delivery_to_a_bucket_is_the_folders_bytes_and_keeps_its_filter(
    engine: Engine,
    settings: Settings,
    s3_bucket: tuple[S3Server, ObjectStore],
    tmp_path: Path,
) -> None:
    server, bucket = s3_bucket
    add_demo(engine, 150)
    got = delivery.deliver(engine, bucket, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    assert [(s.first, s.last) for s in got] == [(0, 99), (100, 150)]
    folder = tmp_path / "folder"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    client, top = server.client(), bucket.prefix + "/"
    body = client.get_object(Bucket=bucket.bucket, Key=top + "log-0-99.jsonl.gz")["Body"].read()
    assert body == (folder / "log-0-99.jsonl.gz").read_bytes()
    with pytest.raises(delivery.FilterMismatchError, match="keeps one filter"):
        delivery.deliver(engine, bucket, LOCAL_ADMIN, settings)  # read from the bucket
    listed = client.list_objects_v2(Bucket=bucket.bucket, Prefix=top)["Contents"]
    assert len(listed) == 6


# -- the verifier ---------------------------------------------------------------------------------


def _resign(seg: Path, key_path: Path, held: list[dict[str, str]]) -> None:
    """Rewrite a segment with these records, its manifest's file and count to match, signed
    with the portal's key: what only a key holder (or a portal bug) could do."""
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in held), mtime=0)
    seg.write_bytes(data)
    doc = manifest(seg)
    doc["file"] = {"name": seg.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    body = signing.canonical_json(doc)
    Path(f"{seg}.manifest.json").write_bytes(body)
    key = signing.load_or_create_key(key_path)
    Path(f"{seg}.manifest.sig").write_bytes(signing.sign_bytes(key, body))


def test_a_record_outside_the_stated_filter_fails_the_check_by_name(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    folder = tmp_path / "out"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    key = key_file(engine, tmp_path)
    seg = folder / "log-100-199.jsonl.gz"
    held = records(seg)
    assert held, "the segment must hold a record to edit"
    edited = dict(held[0], namespace="staging")
    edited["checksum"] = compute_checksum(edited)  # a good checksum: only the filter catches it
    _resign(seg, tmp_path / "signing.key", [edited, *held[1:]])

    bad = failed(checks(folder, key))
    assert bad is not None and bad.name == "log-100-199.jsonl.gz: records match filter"
    assert edited["id"] in bad.reason and "namespace 'staging'" in bad.reason
    done = verify_offline(folder, key)
    assert done.returncode == 1
    assert "FAIL log-100-199.jsonl.gz: records match filter:" in done.stdout
    assert "ok log-100-199.jsonl.gz: record checksums" in done.stdout  # it got that far


def test_filtered_and_unfiltered_segments_in_one_folder_fail_naming_the_check(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 250)
    plain, filtered = tmp_path / "plain", tmp_path / "filtered"
    delivery.deliver(engine, plain, LOCAL_ADMIN, settings, max_records=100)
    delivery.deliver(engine, filtered, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    key = key_file(engine, tmp_path)
    mixed = tmp_path / "mixed"
    shutil.copytree(filtered, mixed)
    for path in mixed.glob("log-0-99.jsonl.gz*"):
        path.unlink()
    for path in plain.glob("log-0-99.jsonl.gz*"):
        shutil.copy(path, mixed / path.name)  # leaves 0-99 unfiltered, the rest filtered
    bad = failed(checks(mixed, key))
    assert bad is not None and bad.name == "segments filter"
    assert "no filter (every record)" in bad.reason and "namespace=payments" in bad.reason
    done = verify_offline(mixed, key)
    assert done.returncode == 1 and "FAIL segments filter:" in done.stdout
    # Each folder alone verifies; the unfiltered one still proves its Merkle root.
    assert checks(plain, key)[-1].reason.startswith("the 2")


# -- one filter per destination -----------------------------------------------------------------


def test_another_filter_to_the_same_destination_is_refused_and_writes_nothing(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 150)
    folder = tmp_path / "out"
    delivery.deliver(engine, folder, LOCAL_ADMIN, settings, max_records=100, flt=FILTER)
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n)) for n in range(1, 6)])
    before, deliveries = files(folder), count(engine, delivery.ACTION)
    for other in (AuditFilter.parse(namespace="payments"), None):
        with pytest.raises(delivery.FilterMismatchError) as refused:
            delivery.deliver(engine, folder, LOCAL_ADMIN, settings, flt=other)
        message = refused.value.message
        assert "\n" not in message and "keeps one filter" in message
        assert "action=incident.create,user.*&namespace=payments,production" in message
    assert files(folder) == before and count(engine, delivery.ACTION) == deliveries

    # The same filter, written in another order and case, is the same filter.
    again = AuditFilter.parse(namespace="payments, production", action="user.*,incident.create")
    (more,) = delivery.deliver(engine, folder, LOCAL_ADMIN, settings, flt=again)
    assert more.first == 151

    # From the command line: one line, exit 2, nothing written.
    before = files(folder)
    cmd = [sys.executable, "-m", "audit_core", "deliver", "--to", str(folder)]
    done = subprocess.run(
        [*cmd, "--namespace", "staging"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "keeps one filter" in done.stderr
    assert files(folder) == before

    # An unfiltered destination refuses a filtered delivery just the same.
    plain = tmp_path / "plain"
    delivery.deliver(engine, plain, LOCAL_ADMIN, settings)
    with pytest.raises(delivery.FilterMismatchError, match="holds a delivery of no filter"):
        delivery.deliver(engine, plain, LOCAL_ADMIN, settings, flt=FILTER)


@pytest.mark.parametrize(
    "given",
    [
        ("--action", "user.*,incident.create", "--namespace", "production,payments"),
        ("--filter", "action=user.*,incident.create&namespace=production&namespace=payments"),
    ],
    ids=["options", "query"],
)
def test_deliver_on_the_command_line_filters_like_export(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path, given: tuple[str]
) -> None:
    add_demo(engine, 200)
    folder = tmp_path / "cli"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "audit_core", "deliver", "--to", str(folder)),
            *given,
            *("--max-records", "100"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "matching records" in done.stderr
    assert delivery.complete_segments(folder) == [(0, 99), (100, 199)]
    for first, last in delivery.complete_segments(folder):
        path = folder / delivery.segment_name(first, last)
        assert [r["id"] for r in records(path)] == matching_ids(engine, FILTER, first, last)
        assert manifest(path)["requestedBy"]["channel"] == "cli"  # type: ignore[index]
    assert failed(checks(folder, key_file(engine, tmp_path))) is None


@pytest.mark.parametrize(
    "args",
    [
        ["--action", "user*"],
        ["--user", "a\tb"],
        ["--namespace", ",".join(f"n{i}" for i in range(51))],
        ["--filter", "from=2026-03-01T00:00:00Z"],
        ["--filter", "verb=delete"],
        ["--filter", "namespace=payments", "--action", "user.*"],
    ],
)
def test_deliver_refuses_a_bad_filter_option_in_one_line(tmp_path: Path, args: list[str]) -> None:
    folder = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "audit_core", "deliver", "--to", str(folder), *args],
        cwd=ROOT,
        env=plain_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert not folder.exists()


# -- AUDIT_DELIVERY_FILTER ------------------------------------------------------------------------


def test_audit_delivery_filter_is_read_like_the_api_parameters(tmp_path: Path) -> None:
    env = {"AUDIT_DELIVERY_TO": str(tmp_path), "AUDIT_SECRET_KEY": "k" * 40}
    got = Settings.from_env({**env, "AUDIT_DELIVERY_FILTER": "namespace=payments&action=user.*"})
    assert got.delivery_filter == AuditFilter.parse(namespace="payments", action="user.*")
    both = "action=user.login&action=user.logout,incident.*&user=Alice@Example.com"
    got = Settings.from_env({**env, "AUDIT_DELIVERY_FILTER": both})
    assert got.delivery_filter is not None
    assert got.delivery_filter.action_terms == ("user.login", "user.logout", "incident.*")
    assert got.delivery_filter.users == ("alice@example.com",)
    assert Settings.from_env({**env, "AUDIT_DELIVERY_FILTER": " "}).delivery_filter is None
    assert Settings.from_env(env).delivery_filter is None
    # `deliver --to` takes the place of the worker's destination and of its filter.
    cli = Settings.from_env({**env, "AUDIT_DELIVERY_FILTER": "from=x"}, delivery_to="elsewhere")
    assert cli.delivery_filter is None


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("namespace", "must be a query string"),
        ("namespace=a&&user=b", "must be a query string"),
        ("colour=red", "unknown key 'colour'"),
        ("from=2026-03-01", "takes no from"),
        ("namespace=payments&to=2026-03-01", "takes no to"),
        ("action=user*", "a wildcard may only end a family"),
        ("action=a*b", "'*' may only come last"),
        ("namespace=", "names no action, user or namespace"),
        ("user=a%0Ab", "control character"),
        ("namespace=payments\n", "control character"),
        ("namespace=" + "x" * 201, "longer than 200"),
    ],
)
def test_a_bad_audit_delivery_filter_is_one_line_naming_the_variable(
    tmp_path: Path, raw: str, says: str
) -> None:
    env = {"AUDIT_DELIVERY_TO": str(tmp_path), "AUDIT_SECRET_KEY": "k" * 40}
    with pytest.raises(ConfigError) as bad:
        Settings.from_env({**env, "AUDIT_DELIVERY_FILTER": raw})
    assert bad.value.message.startswith("AUDIT_DELIVERY_FILTER")
    assert says in bad.value.message and "\n" not in bad.value.message


def test_audit_delivery_filter_without_a_destination_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUDIT_DELIVERY_FILTER is set but AUDIT_DELIVERY_TO"):
        Settings.from_env({"AUDIT_DELIVERY_FILTER": "namespace=payments", "AUDIT_SECRET_KEY": "k"})


def test_the_worker_refuses_to_start_on_a_bad_filter_in_one_line(tmp_path: Path) -> None:
    env = plain_env(
        tmp_path,
        AUDIT_DELIVERY_TO=str(tmp_path / "out"),
        AUDIT_DELIVERY_FILTER="namespace=payments&from=2026-03-01",
    )
    done = subprocess.run(
        [sys.executable, "-m", "audit_core", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "AUDIT_DELIVERY_FILTER" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_worker_delivers_with_its_filter_on_its_schedule(
    engine: Engine, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_demo(engine, 120)
    folder = tmp_path / "scheduled"
    flt = AuditFilter.parse(namespace="payments,production")
    scheduled = replace(settings, delivery_to=folder, delivery_seconds=3600, delivery_filter=flt)
    run_schedule(engine, scheduled, folder)
    assert delivery.complete_segments(folder) == [(0, 119)]
    path = folder / "log-0-119.jsonl.gz"
    assert [r["id"] for r in records(path)] == matching_ids(engine, flt, 0, 119)
    assert manifest(path)["query"]["namespace"] == ["payments", "production"]  # type: ignore[index]
    assert count(engine, delivery.ACTION) == 1
    assert failed(checks(folder, key_file(engine, tmp_path))) is None

    # A worker asked for another filter there writes nothing (and says so in its log).
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n)) for n in range(1, 6)])
    before = files(folder)
    other = replace(scheduled, delivery_filter=AuditFilter.parse(namespace="staging"))
    caplog.set_level(logging.ERROR, logger="audit_core.worker")
    handle = WorkerThreads(engine, other, timing=Timing(poll_seconds=0.05)).start()
    try:
        deadline = time.monotonic() + 60
        while "not delivering" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        handle.stop()
    assert "keeps one filter" in caplog.text
    assert files(folder) == before and count(engine, delivery.ACTION) == 1
