"""The evidence routes in-process, on both engines: keys, checkpoints, scoped proofs, and the
manifests of streamed exports and job files checked by the offline verifier."""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
from sqlalchemy import select

from audit_core import offline_verify
from audit_core.access import Principal
from audit_core.http.routes import PendingManifests
from audit_core.models import AUDIT as T

from .test_api import TO, Api, add, api, run_worker_until, status  # noqa: F401
from .test_evidence import h_leaf, open_checkpoint, rfc_verify_inclusion

LIMIT = 50


def public(api: Api) -> bytes:
    assert api.ctx.signer is not None
    return api.ctx.signer.public


def test_keys_are_a_jwks_anyone_may_read(api: Api) -> None:
    resp = api.get("/audit/keys")
    assert resp.status_code == 200
    (key,) = resp.json()["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
    x = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    assert x == public(api)
    assert key["kid"] == hashlib.sha256(b"audit-export-portal\n\x01" + x).digest()[:4].hex()


def test_the_checkpoint_is_the_signed_note_exactly(api: Api) -> None:
    add(api.engine, 20)
    status(api.get("/audit/checkpoint"), 401, "Unauthorized")
    resp = api.get("/audit/checkpoint", api.viewer)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    origin, size, _ = open_checkpoint(resp.text, public(api))
    assert origin == "audit-export-portal" and size >= 20
    older = api.get("/audit/checkpoint", api.viewer, size="5")
    assert open_checkpoint(older.text, public(api))[1] == 5
    status(api.get("/audit/checkpoint", api.viewer, size="x"), 400, "BadRequest")


def test_an_inclusion_proof_is_scoped_like_every_read(api: Api) -> None:
    add(api.engine, 30)
    with api.engine.connect() as conn:
        cols = (T.c.id, T.c.namespace, T.c.checksum)
        rows = conn.execute(select(*cols).where(T.c.namespace != "audit-portal")).all()
    inside = next(r for r in rows if r.namespace == "production")
    outside = next(r for r in rows if r.namespace != "production")
    resp = api.get("/audit/proof/inclusion", api.auditor, id=inside.id)
    assert resp.status_code == 200, resp.text
    proof = resp.json()
    _, size, root = open_checkpoint(proof["checkpoint"], public(api))
    leaf = h_leaf(bytes.fromhex(inside.checksum.removeprefix("sha256:")))
    path = [base64.b64decode(p) for p in proof["inclusionPath"]]
    assert size == proof["treeSize"]
    assert rfc_verify_inclusion(leaf, proof["leafIndex"], size, path, root)
    hidden = api.get("/audit/proof/inclusion", api.auditor, id=outside.id)
    unknown = api.get("/audit/proof/inclusion", api.auditor, id="audit-19990101-001")
    assert status(hidden, 404, "NotFound")["message"] == status(unknown, 404, "NotFound")[
        "message"
    ].replace("audit-19990101-001", outside.id)


def test_a_consistency_proof_between_two_sizes(api: Api) -> None:
    add(api.engine, 40)
    resp = api.get("/audit/proof/consistency", api.viewer, **{"from": "10", "to": "40"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["from"], body["to"]) == (10, 40) and body["consistencyPath"]
    assert open_checkpoint(body["checkpoint"], public(api))[1] == 40
    status(api.get("/audit/proof/consistency", api.viewer, **{"from": "0"}), 400, "BadRequest")


def verify_bundle(
    tmp: Path, name: str, data: bytes, manifest: bytes, sig: bytes, pem: bytes
) -> list[offline_verify.Check]:
    (tmp / name).write_bytes(data)
    (tmp / (name + ".manifest.json")).write_bytes(manifest)
    (tmp / (name + ".manifest.sig")).write_bytes(sig)
    (tmp / "portal.pub.pem").write_bytes(pem)
    return offline_verify.verify_bundle(
        tmp / name,
        tmp / (name + ".manifest.json"),
        tmp / (name + ".manifest.sig"),
        tmp / "portal.pub.pem",
    )


def test_a_streamed_export_announces_its_manifest(api: Api, tmp_path: Path) -> None:
    add(api.engine, 30)
    resp = api.get("/audit/export", api.auditor, format="jsonl", to=TO)
    assert resp.status_code == 200, resp.text
    link = resp.headers["link"]
    assert link.endswith('>; rel="describedby"') and link.startswith("</api/v1/")
    url = link[1 : link.index(">")].removeprefix("/api/v1")
    manifest = api.get(url, api.auditor)
    sig = api.get(url + ".sig", api.auditor)
    assert manifest.status_code == sig.status_code == 200, manifest.text
    doc = json.loads(manifest.content)
    assert doc["requestedBy"] == {"user": "ana@empresa.com", "role": "auditor", "channel": "api"}
    assert doc["query"]["namespace"] == ["production"] and "to=" in doc["query"]["description"]
    assert api.ctx.signer is not None
    name = resp.headers["content-disposition"].split('filename="')[1].rstrip('"')
    checks = verify_bundle(
        tmp_path, name, resp.content, manifest.content, sig.content, api.ctx.signer.public_pem()
    )
    assert all(c.ok for c in checks), [c.line() for c in checks]
    status(api.get(url, api.viewer), 404, "NotFound")  # someone else's manifest


def test_a_job_file_has_its_manifest_beside_it(api: Api, tmp_path: Path) -> None:
    add(api.engine, LIMIT + 10)
    queued = api.get("/audit/export", api.admin, format="csv", to=TO)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["metadata"]["jobId"]
    done = run_worker_until(api, job_id, ("completed", "failed"))
    assert done["status"]["state"] == "completed", done
    got = api.get(f"/audit/export/download/{job_id}", api.admin)
    manifest = api.get(f"/audit/export/download/{job_id}/manifest", api.admin)
    sig = api.get(f"/audit/export/download/{job_id}/manifest.sig", api.admin)
    assert manifest.status_code == sig.status_code == 200, manifest.text
    doc = json.loads(manifest.content)
    assert doc["exportId"] == job_id and doc["requestedBy"]["channel"] == "job"
    assert doc["file"]["sha256"] == done["status"]["sha256"]
    assert api.ctx.signer is not None
    name = got.headers["content-disposition"].split('filename="')[1].rstrip('"')
    doc_name = doc["file"]["name"]
    checks = verify_bundle(
        tmp_path, doc_name, got.content, manifest.content, sig.content, api.ctx.signer.public_pem()
    )
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert (
        name
    )  # the browser's name may differ from the stored file's; the manifest names the latter
    status(api.get(f"/audit/export/download/{job_id}/manifest", api.auditor), 404, "NotFound")


def test_a_manifest_being_signed_holds_its_requester_only(api: Api) -> None:
    """A stream's manifest is signed after its response has ended: its requester (or an
    admin) who asks at once is held until it is kept; anyone else is answered at once."""
    pending = PendingManifests()
    owner = Principal("Ana@Empresa.com", "auditor", frozenset({"production"}), "")
    other = Principal("bob@empresa.com", "auditor", frozenset({"production"}), "")
    admin = Principal("boss@empresa.com", "admin", None, "")
    order: list[str] = []

    async def ask(who: Principal) -> None:
        await pending.wait(api.ctx, "export-20260321-001", who)
        order.append(who.email)

    async def main() -> None:
        end = pending.begin(api.ctx, "export-20260321-001", owner)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, owner)
            tg.start_soon(ask, admin)
            tg.start_soon(ask, other)
            await anyio.sleep(0.2)
            order.append("signed")
            end()
        await ask(owner)  # once ended, nobody waits

    # A loop of its own, on a thread of its own (a test before may have left this thread's).
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, main).result()
    assert order[:2] == ["bob@empresa.com", "signed"]  # someone else is not held
    assert sorted(order[2:4]) == ["Ana@Empresa.com", "boss@empresa.com"]  # held until signed
    assert order[4:] == ["Ana@Empresa.com"]
