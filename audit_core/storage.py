"""Where export job files live: a local folder, or a bucket of S3-compatible object storage.

    open_storage(settings) -> Storage    LocalStorage(AUDIT_EXPORT_DIR), the embedded default,
                                         or S3Storage(AUDIT_EXPORT_STORAGE=s3://bucket/prefix)
    storage.open_writer(name) -> PendingFile: write() ... finish(), then publish() or discard()
    storage.exists(name) / size(name) / delete(name) / presigned_url(name, ...) / check()

Log deliveries (audit_core.delivery) to a bucket use S3Storage too, for a few more calls:
`names()` (the objects under the prefix), `put(name, data)` and `read(name)` (a small object
in one request), `open_upload(name)` (one request when the file stays under a part, else a
multipart upload) and `abort_uploads(match)` (what a killed delivery left unfinished).

A file being written has no visible name. Locally it is a `.NAME.<random>.part` file beside
its final name, fsynced by `finish` and renamed into place by `publish`. In a bucket it is a
multipart upload: every 8 MiB written goes out as one part (memory stays flat whatever the
file's size), `finish` sends the rest, and only `publish` completes the upload, which is
when the object comes to exist; it then checks the object's size. The worker calls
`publish` inside the transaction that marks the job completed, so a worker that dies or
fails mid-upload leaves no object (an upload never completed is no object), and `discard`
aborts the upload on any error. `open_writer` also clears what dead workers left under the
same name (their part files, their uploads): the caller holds the job's lease.

The client is boto3 (pinned in requirements.txt). Why boto3 rather than obstore: the job
path wants every step of a multipart upload in its own hands (create, upload each part as
it fills, complete inside the job's transaction, abort on error), and boto3 exposes exactly
those calls, plus SigV4 presigned URLs that bind the response's Content-Disposition; it is
AWS's own SDK for S3, works with S3-compatible servers (tested on SeaweedFS), reads the
standard credential chain itself (AWS_ACCESS_KEY_ID..., shared config, instance roles),
and has complete type stubs (boto3-stubs[s3]) for mypy strict. obstore (bindings to Rust's
object_store) would serve too; its selling point, transfer speed, matters little here, where
the database cursor sets the pace. boto3 is imported only when a bucket is configured. Its
own variables tune it without code here (AWS_CA_BUNDLE for a private CA, and
AWS_REQUEST_CHECKSUM_CALCULATION=when_required for an old server that refuses the CRC32
checksums boto3 adds to every part by default).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .config import ObjectStore, Settings
from .errors import AuditError, ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)
PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB per part but the last; 8 MiB is boto3's own
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit: 8 MiB parts allow files up to 78 GiB
LINK_SECONDS = 300  # how long a presigned download link stays valid


class StorageError(AuditError):
    """The export storage could not do what was asked; the message says what, no secrets."""

    status = 503
    reason = "ServiceUnavailable"


class PendingFile(Protocol):
    """A job file being written: invisible until publish(), gone after discard()."""

    def write(self, data: bytes) -> int:
        """Append data; return how many bytes were taken (all of them)."""
        ...

    def finish(self) -> None:
        """Make everything written durable; the file is still invisible."""
        ...

    def publish(self) -> None:
        """Make the finished file visible under its name (atomically, whole)."""
        ...

    def discard(self) -> None:
        """Drop what was written; a no-op once published, safe to call twice."""
        ...


class Storage(Protocol):
    """Where job files are kept, by file name (jobs.file_name)."""

    def open_writer(self, name: str) -> PendingFile:
        """Start writing `name`, clearing leftovers of dead workers (hold the job's lease)."""
        ...

    def exists(self, name: str) -> bool:
        """Is the published file there?"""
        ...

    def size(self, name: str) -> int | None:
        """The published file's size in bytes; None when it is not there."""
        ...

    def delete(self, name: str) -> None:
        """Remove the published file; nothing happens when it is not there."""
        ...

    def presigned_url(
        self,
        name: str,
        *,
        expires_in: int = LINK_SECONDS,
        method: str = "GET",
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A URL that lets its holder GET (or HEAD) this one file until it expires."""
        ...

    def check(self) -> None:
        """Raise ConfigError naming the setting when the storage cannot be used."""
        ...


def open_storage(settings: Settings) -> Storage:
    """The job file storage the settings name (one S3 client per bucket and process)."""
    if settings.export_storage is None:
        return LocalStorage(settings.export_dir)
    return _s3_storage(settings.export_storage)


@functools.lru_cache(maxsize=8)
def _s3_storage(store: ObjectStore) -> S3Storage:
    # boto3 clients are thread-safe and slow to make (~100 ms measured); credentials are read
    # when it is made, once per process and bucket.
    return S3Storage(store)


# -- the local folder ----------------------------------------------------------------------


class LocalStorage:
    """Job files in a folder (AUDIT_EXPORT_DIR): the embedded default."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / name

    def open_writer(self, name: str) -> PendingFile:
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        for part in final.parent.glob(f".{final.name}.*.part"):
            _unlink(part)  # a dead worker's: we hold the job's lease now
        return _LocalPending(final)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def presigned_url(
        self,
        name: str,
        *,
        expires_in: int = LINK_SECONDS,
        method: str = "GET",
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        raise StorageError("files in a local folder are served by the portal, not by links")

    def check(self) -> None:
        """Nothing to do: context.check_export_dir checks the folder for every face."""


class _LocalPending:
    """A `.NAME.<random>.part` file beside the final name; publish renames it into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.part")
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed by finish or discard

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def finish(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def publish(self) -> None:
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)

    def discard(self) -> None:
        self.fh.close()
        _unlink(self.tmp)  # after publish there is nothing left under this name


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove %s", path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- S3-compatible object storage ------------------------------------------------------------


class S3Storage:
    """Job files as objects under s3://bucket/prefix/ (AUDIT_EXPORT_STORAGE)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        part_size: int = PART_SIZE,
        client: S3Client | None = None,
        setting: str = "AUDIT_EXPORT_STORAGE",
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes, got {part_size}")
        self.store = store
        self.part_size = part_size
        self.client = client or make_client(store)
        self.setting = setting  # the setting that named this bucket, for check()'s message

    def _errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return s3_errors(doing, self.setting)

    def open_writer(self, name: str) -> PendingFile:
        key = self.store.key(name)
        self._abort_stale(key)
        with self._errors("start the upload of the export file"):
            upload = self.client.create_multipart_upload(Bucket=self.store.bucket, Key=key)
        return _Multipart(self, key, upload["UploadId"])

    def _abort_stale(self, key: str) -> None:
        """Abort uploads a dead worker left for this key (their parts cost storage)."""
        with self._errors("list unfinished uploads"):
            found = self.client.list_multipart_uploads(Bucket=self.store.bucket, Prefix=key)
        for upload in found.get("Uploads", []):
            if upload.get("Key") == key and "UploadId" in upload:
                self._abort(key, upload["UploadId"])

    def _abort(self, key: str, upload_id: str) -> None:
        with self._errors("abort an unfinished upload"), _missing_is_fine():
            self.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=key, UploadId=upload_id
            )

    def open_upload(self, name: str) -> PendingFile:
        """Start writing `name` without looking for earlier uploads (see abort_uploads): one
        PUT when it stays under one part (small files: no upload to create or complete),
        else a multipart upload begun when the first part is full."""
        return _SmallOrMultipart(self, name)

    def put(self, name: str, data: bytes) -> None:
        """Store a small object whole, in one request (replacing any object of that name)."""
        with self._errors(f"store {name}"):
            self.client.put_object(Bucket=self.store.bucket, Key=self.store.key(name), Body=data)

    def read(self, name: str) -> bytes:
        """The bytes of a small object, in one request."""
        with self._errors(f"read {name}"):
            got = self.client.get_object(Bucket=self.store.bucket, Key=self.store.key(name))
            return got["Body"].read()

    def _top(self) -> str:
        return f"{self.store.prefix}/" if self.store.prefix else ""

    def names(self) -> list[str]:
        """The names of the objects right under the prefix (none of a deeper folder)."""
        top, found = self._top(), []
        with self._errors("list the objects under the prefix"):
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.store.bucket, Prefix=top):
                for obj in page.get("Contents", []):
                    name = obj.get("Key", "").removeprefix(top)
                    if name and "/" not in name:
                        found.append(name)
        return found

    def abort_uploads(self, match: Callable[[str], bool]) -> int:
        """Abort the unfinished uploads right under the prefix whose name matches (what a
        killed writer left: their parts cost storage); return how many."""
        top, stale = self._top(), []
        with self._errors("list unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads")
            for page in pages.paginate(Bucket=self.store.bucket, Prefix=top):
                for upload in page.get("Uploads", []):
                    key, upload_id = upload.get("Key", ""), upload.get("UploadId")
                    name = key.removeprefix(top)
                    if upload_id and name and "/" not in name and match(name):
                        stale.append((key, upload_id))
        for key, upload_id in stale:
            self._abort(key, upload_id)
        return len(stale)

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        return self.key_size(self.store.key(name))

    def key_size(self, key: str) -> int | None:
        """The size of the object under `key`; None when there is none."""
        with self._errors("look up the export file"), _missing_is_fine():
            head = self.client.head_object(Bucket=self.store.bucket, Key=key)
            return int(head["ContentLength"])
        return None

    def delete(self, name: str) -> None:
        self.delete_key(self.store.key(name))

    def delete_key(self, key: str) -> None:
        """Remove the object under `key` (S3 answers the same when there is none)."""
        with self._errors("delete the export file"):
            self.client.delete_object(Bucket=self.store.bucket, Key=key)

    def presigned_url(
        self,
        name: str,
        *,
        expires_in: int = LINK_SECONDS,
        method: str = "GET",
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """SigV4 query-signed: bound to this key, this method and these response headers."""
        params = {"Bucket": self.store.bucket, "Key": self.store.key(name)}
        if download_name is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        if content_type is not None:
            params["ResponseContentType"] = content_type
        # The signature covers the method: a HEAD link is signed for HEAD, so it works too.
        operation = "head_object" if method == "HEAD" else "get_object"
        with self._errors("sign a download link"):
            return self.client.generate_presigned_url(
                operation, Params=params, ExpiresIn=expires_in
            )

    def check(self, setting: str | None = None) -> None:
        """Reach the bucket with the credentials given, or say which setting to fix (the
        one that named the bucket, or `setting`)."""
        name = setting or self.setting
        try:
            self.client.head_bucket(Bucket=self.store.bucket)
        except Exception as exc:
            if not _is_client_failure(exc):
                raise
            raise ConfigError(f"{name} {self.store.url}: {_why(exc, name)}") from None


class _Multipart:
    """One multipart upload: parts go out as they fill; publish completes and checks it."""

    def __init__(
        self, storage: S3Storage, key: str, upload_id: str, written: bytearray | None = None
    ) -> None:
        self.s3 = storage
        self.key = key
        self.upload_id = upload_id
        self._buffer = written if written is not None else bytearray()  # about one part
        self.size = len(self._buffer)
        self._parts: list[CompletedPartTypeDef] = []
        self._settled = False  # completed or aborted: nothing left to discard

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self.s3.part_size:
            with memoryview(self._buffer) as view:
                part = bytes(view[: self.s3.part_size])
            del self._buffer[: self.s3.part_size]
            self._send(part)
        return len(data)

    def finish(self) -> None:
        if self._buffer or not self._parts:  # an empty file is one empty part
            self._send(bytes(self._buffer))
            self._buffer.clear()

    def _send(self, body: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"the export file is over {MAX_PARTS} parts of {self.s3.part_size} bytes"
            )
        with self.s3._errors("upload a part of the export file"):
            sent = self.s3.client.upload_part(
                Bucket=self.s3.store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def publish(self) -> None:
        bucket = self.s3.store.bucket
        with self.s3._errors("complete the upload of the export file"):
            self.s3.client.complete_multipart_upload(
                Bucket=bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._settled = True
        stored = self.s3.key_size(self.key)
        if stored != self.size:
            self.s3.delete_key(self.key)  # never served: the job is not completed
            raise StorageError(
                f"the object store kept {stored} bytes of the export file's {self.size}"
            )

    def discard(self) -> None:
        self._buffer.clear()
        if not self._settled:
            self._settled = True
            self.s3._abort(self.key, self.upload_id)


class _SmallOrMultipart:
    """One PUT for a file under one part; a multipart upload from its first full part on."""

    def __init__(self, storage: S3Storage, name: str) -> None:
        self.s3 = storage
        self.name = name
        self._small = bytearray()  # until it reaches a part; then the upload takes over
        self._upload: _Multipart | None = None

    def write(self, data: bytes) -> int:
        if self._upload is not None:
            return self._upload.write(data)
        self._small += data
        if len(self._small) >= self.s3.part_size:
            key = self.s3.store.key(self.name)
            with self.s3._errors(f"start the upload of {self.name}"):
                made = self.s3.client.create_multipart_upload(Bucket=self.s3.store.bucket, Key=key)
            # The upload takes the buffer over (no copy) and sends its full parts.
            self._upload = _Multipart(self.s3, key, made["UploadId"], self._small)
            self._small = bytearray()
            self._upload.write(b"")
        return len(data)

    def finish(self) -> None:
        if self._upload is not None:
            self._upload.finish()

    def publish(self) -> None:
        if self._upload is not None:
            self._upload.publish()
        else:
            self.s3.put(self.name, bytes(self._small))
            self._small.clear()

    def discard(self) -> None:
        self._small.clear()
        if self._upload is not None:
            self._upload.discard()


def make_client(store: ObjectStore) -> S3Client:
    """An S3 client for the store: SigV4, path-style addressing on a custom endpoint."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        # Most S3-compatible servers (SeaweedFS, MinIO, Ceph) want path-style addressing.
        s3={"addressing_style": "path" if store.endpoint_url else "auto"},
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=10,
        read_timeout=60,
    )
    session = boto3.session.Session()  # sessions are not thread-safe: one of our own
    return session.client(
        "s3", endpoint_url=store.endpoint_url, region_name=store.region, config=config
    )


@contextlib.contextmanager
def s3_errors(doing: str, setting: str = "AUDIT_EXPORT_STORAGE") -> Iterator[None]:
    """Turn a client failure into StorageError: what we tried, and the store's reason
    (naming `setting`, the one that named the bucket, where it is the thing to fix)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; one message
        if not _is_client_failure(exc):
            raise
        raise StorageError(f"the object store could not {doing}: {_why(exc, setting)}") from exc


@contextlib.contextmanager
def _missing_is_fine() -> Iterator[None]:
    """Swallow the store's 'no such key / upload' (404) and nothing else."""
    try:
        yield
    except Exception as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound", "NoSuchUpload"):
            raise


def _is_client_failure(exc: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)


def _code(exc: Exception) -> str | None:
    """The S3 error code of a ClientError (NoSuchBucket, AccessDenied, 404, ...)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def _why(exc: Exception, setting: str) -> str:
    """A failure in plain words, without a secret (botocore never puts one in messages)."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    code = _code(exc)
    if isinstance(exc, NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(exc, EndpointConnectionError):
        return "the server cannot be reached: check AUDIT_S3_ENDPOINT_URL and the network"
    if code in ("404", "NoSuchBucket", "NotFound"):
        return f"the bucket does not exist: create it, or correct {setting}"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return (
            f"the server refused the credentials ({code}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, and that they may use the bucket"
        )
    return code or type(exc).__name__
