"""The Verify page and what it calls: checking uploaded bundles, scoped inclusion proofs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from audit_core import access, evidence, offline_verify, service, store
from audit_core.access import Principal
from audit_core.config import Settings
from audit_core.errors import BadRequestError, NotFoundError
from audit_core.record import normalize
from audit_core.service import Upload

from .conftest import installed, seed_record

ROOT = Path(__file__).resolve().parents[1]
NAV = str(ROOT / "navigation.py")
AUTH = {
    "auth": {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "test-cookie-secret",
        "client_id": "portal",
        "client_secret": "secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    }
}
ADMIN = Principal("boss@example.com", "admin", None, "127.0.0.1")
VIEWER = Principal("vera@example.com", "viewer", frozenset({"production"}))
CHECKS = [
    "manifest signature",
    "manifest format",
    "file name",
    "file bytes",
    "file sha256",
    "records parse",
    "record count",
    "record ids",
    "record checksums",
    "checkpoint signature",
    "checkpoint snapshot",
]
PRODUCTION = [f"audit-20260301-{n:03d}" for n in range(1, 5)]
PAYMENTS = [f"audit-20260301-{n:03d}" for n in range(5, 8)]


def add_records(engine: Engine) -> None:
    """Four records in production, then three in payments."""
    rows = [seed_record(n, namespace="production") for n in range(1, 5)]
    rows += [seed_record(n, namespace="payments") for n in range(5, 8)]
    with engine.begin() as conn:
        store.append(conn, [normalize(r) for r in rows])


@pytest.fixture
def portal_env(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """Install a context on the test database for the pages."""
    st.cache_resource.clear()
    st.cache_data.clear()
    with installed(settings):
        yield settings
    st.cache_resource.clear()
    st.cache_data.clear()


def app(user: dict[str, Any] | None = None) -> AppTest:
    """An AppTest of the navigation script: local mode, or [auth] with `user` signed in."""
    at = AppTest.from_file(NAV, default_timeout=60)
    if user is not None:
        at.secrets = json.loads(json.dumps(AUTH))
        at.user = user
    return at


def as_role(engine: Engine, role: str) -> AppTest:
    """The Verify page for the local admin, or for a signed-in auditor or viewer of production."""
    if role == "admin":
        at = app().run()
    else:
        email = f"{role}@example.com"
        access.upsert_user(engine, email, role, "production", ADMIN)
        at = app({"is_logged_in": True, "email": email}).run()
    return at.switch_page("pages/verify.py").run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def downloads(at: AppTest) -> list[str]:
    return [str(getattr(b, "label", "")) for b in at.get("download_button")]


def prove(at: AppTest, record_id: str) -> AppTest:
    return at.text_input(key="record").input(record_id).run()


def shown_proof(at: AppTest) -> dict[str, Any] | None:
    for block in at.code:
        if block.language == "json":
            return dict(json.loads(block.value))
    return None


def check_proof(proof: dict[str, Any], settings: Settings, checksum: str) -> None:
    """The proof leads from the record's leaf to the root its signed checkpoint names."""
    keys = [evidence.load_signer(settings).key.public_key()]
    _, size, root = offline_verify.verify_note(proof["checkpoint"], keys)
    leaf = offline_verify.leaf_hash(bytes.fromhex(checksum.removeprefix("sha256:")))
    path = [base64.b64decode(h) for h in proof["inclusionPath"]]
    assert size == proof["treeSize"]
    assert offline_verify.verify_inclusion(leaf, proof["leafIndex"], size, path, root)


def public_pem(settings: Settings) -> bytes:
    """The portal's public key (PEM), as the page hands it to the verifier."""
    return evidence.load_signer(settings).public_pem()


# ---------------------------------------------------------------------------- the page


@pytest.mark.parametrize("role", ["admin", "auditor", "viewer"])
def test_the_verify_page_renders_for_every_role(
    portal_env: Settings, engine: Engine, role: str
) -> None:
    add_records(engine)
    at = as_role(engine, role)
    no_exception(at)
    assert at.title[0].value == "Verify"
    assert downloads(at) == [
        "Public key (PEM)",
        "Key set (JWKS)",
        "Verifier (offline_verify.py)",
    ]
    assert len(at.get("file_uploader")) == 4
    assert any("Add the export file" in i.value for i in at.info)
    commands = " ".join(c.value for c in at.code)
    assert "openssl pkeyutl -verify -pubin -inkey portal.pub.pem" in commands
    assert "python offline_verify.py F --key portal.pub.pem" in commands


def test_the_proof_panel_proves_a_visible_record(portal_env: Settings, engine: Engine) -> None:
    add_records(engine)
    at = prove(as_role(engine, "viewer"), PRODUCTION[1])
    no_exception(at)
    proof = shown_proof(at)
    assert proof is not None
    assert (proof["id"], proof["leafIndex"]) == (PRODUCTION[1], 1)
    check_proof(proof, portal_env, seed_record(2, namespace="production")["checksum"])
    assert "Download proof" in downloads(at)
    assert not at.error


@pytest.mark.parametrize("record_id", [PAYMENTS[0], "audit-20991231-001"])
def test_the_proof_panel_says_no_record_outside_the_grants_or_unknown(
    portal_env: Settings, engine: Engine, record_id: str
) -> None:
    add_records(engine)
    at = prove(as_role(engine, "viewer"), record_id)
    no_exception(at)
    assert shown_proof(at) is None
    assert [e.value.replace("\\", "") for e in at.error] == [f"no record {record_id}"]
    assert "Download proof" not in downloads(at)


def test_prove_this_record_in_explore_opens_its_proof(portal_env: Settings, engine: Engine) -> None:
    add_records(engine)
    at = app().run()
    at.session_state["explore_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    newest = at.dataframe[0].value["id"].iloc[0]
    next(b for b in at.button if b.label == "Prove this record").click().run()
    no_exception(at)
    assert at.title[0].value == "Verify"
    assert at.text_input(key="record").value == newest
    proof = shown_proof(at)
    assert proof is not None and proof["id"] == newest


# ---------------------------------------------------------------------- the library


def test_prove_record_refuses_outside_the_grants_like_an_unknown_id(engine: Engine) -> None:
    add_records(engine)
    with engine.begin() as conn:
        assert service.prove_record(conn, VIEWER, PRODUCTION[0])["leafIndex"] == 0
        assert service.prove_record(conn, ADMIN, PAYMENTS[0])["leafIndex"] == 4
        messages = []
        for rid in (PAYMENTS[0], "audit-20991231-001"):
            with pytest.raises(NotFoundError) as caught:
                service.prove_record(conn, VIEWER, rid)
            messages.append(caught.value.message)
    assert messages == [f"no record {PAYMENTS[0]}", "no record audit-20991231-001"]


def test_prove_record_at_an_older_size(engine: Engine) -> None:
    add_records(engine)
    with engine.begin() as conn:
        assert service.prove_record(conn, VIEWER, PRODUCTION[0], 2)["treeSize"] == 2
        with pytest.raises(BadRequestError, match="size must be above"):
            service.prove_record(conn, VIEWER, PRODUCTION[3], 2)


@pytest.fixture
def bundle(engine: Engine, env: dict[str, str], tmp_path: Path) -> dict[str, Upload]:
    """A CSV export of the log made by the real CLI: its file, manifest and signature."""
    add_records(engine)
    out = tmp_path / "bundle" / "audit.csv"
    out.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "audit_core", "export", "--format", "csv", "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {
        "file": Upload(out.name, out.read_bytes()),
        "manifest": Upload(f"{out.name}.manifest.json", Path(f"{out}.manifest.json").read_bytes()),
        "signature": Upload(f"{out.name}.manifest.sig", Path(f"{out}.manifest.sig").read_bytes()),
    }


def test_a_good_bundle_passes_every_check(bundle: dict[str, Upload], settings: Settings) -> None:
    checks = service.verify_upload(**bundle, public_pem=public_pem(settings))
    assert [(c.name, c.ok) for c in checks] == [(name, True) for name in CHECKS]
    assert "7 csv records" in checks[CHECKS.index("records parse")].reason


def flip(upload: Upload, at: int) -> Upload:
    data = bytearray(upload.data)
    data[at] ^= 0x01
    return Upload(upload.name, bytes(data))


TAMPERING: dict[str, tuple[Callable[[dict[str, Upload]], dict[str, Upload]], str]] = {
    "a flipped byte in the file": (
        lambda b: {**b, "file": flip(b["file"], len(b["file"].data) // 2)},
        "file sha256",
    ),
    "a flipped byte in the manifest": (
        lambda b: {**b, "manifest": flip(b["manifest"], 40)},
        "manifest signature",
    ),
    "a manifest that is not JSON": (
        lambda b: {**b, "manifest": Upload("audit.csv.manifest.json", b"not json")},
        "manifest signature",
    ),
    "a renamed file": (
        lambda b: {**b, "file": Upload("other.csv", b["file"].data)},
        "file name",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_bundle_fails_at_the_check_that_sees_it(
    bundle: dict[str, Upload], settings: Settings, case: str
) -> None:
    tamper, failing = TAMPERING[case]
    checks = service.verify_upload(**tamper(bundle), public_pem=public_pem(settings))
    assert [c.name for c in checks] == CHECKS[: CHECKS.index(failing) + 1]
    assert [c.ok for c in checks] == [True] * (len(checks) - 1) + [False]


def test_inclusion_proofs_of_exported_records_pass(
    bundle: dict[str, Upload], settings: Settings, engine: Engine
) -> None:
    with engine.begin() as conn:
        answers = [service.prove_record(conn, ADMIN, rid) for rid in (PRODUCTION[0], PAYMENTS[2])]
    proofs = Upload("proofs.json", json.dumps(answers).encode())
    checks = service.verify_upload(**bundle, public_pem=public_pem(settings), proofs=proofs)
    assert [c.name for c in checks] == [*CHECKS, "inclusion proof", "inclusion proof"]
    assert all(c.ok for c in checks)


def test_unusable_input_is_a_clear_message_without_server_paths(
    bundle: dict[str, Upload], settings: Settings
) -> None:
    proofs = Upload("proofs.json", b"{not json")
    with pytest.raises(BadRequestError) as caught:
        service.verify_upload(**bundle, public_pem=public_pem(settings), proofs=proofs)
    message = caught.value.message
    assert message.startswith("proofs file proofs.json is not valid JSON")
    assert "audit-verify-" not in message and "/" not in message


@pytest.mark.parametrize("name", ["", "..", "dir/", "a\x00b"])
def test_an_upload_without_a_file_name_is_refused(
    bundle: dict[str, Upload], settings: Settings, name: str
) -> None:
    with pytest.raises(BadRequestError, match="no usable file name"):
        service.verify_upload(
            **{**bundle, "file": Upload(name, b"x")}, public_pem=public_pem(settings)
        )


def test_an_upload_keeps_only_its_base_name(bundle: dict[str, Upload], settings: Settings) -> None:
    moved = {
        **bundle,
        "file": Upload(f"C:\\exports\\../{bundle['file'].name}", bundle["file"].data),
    }
    checks = service.verify_upload(**moved, public_pem=public_pem(settings))
    assert all(c.ok for c in checks)
