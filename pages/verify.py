"""Verify: check a signed export in the browser, fetch the verifier and key, prove a record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from audit_core import offline_verify, service, views
from audit_core.access import Principal
from audit_core.errors import AuditError
from audit_core.evidence import Signer
from pages import common

EXPORT_TYPES = ["csv", "json", "jsonl", "ndjson", "gz"]
OPENSSL = (
    "openssl pkeyutl -verify -pubin -inkey portal.pub.pem -rawin "
    "-in F.manifest.json -sigfile F.manifest.sig"
)
VERIFIER_USE = "python offline_verify.py F --key portal.pub.pem [--proofs P]"
RECORD_PARAM = "record"


def _upload(label: str, key: str, types: list[str], hint: str) -> service.Upload | None:
    got = st.file_uploader(label, type=types, key=key, help=hint)
    return None if got is None else service.Upload(got.name, got.getvalue())


@st.fragment
def _check_export(signer: Signer) -> None:
    """Upload a file, its manifest and signature (and proofs); show every check and a verdict."""
    st.header("Check an export")
    st.write(
        "Upload an export with the manifest and signature that came with it. The page runs "
        "the offline verifier's checks with this portal's public key: the signature, the "
        "file's bytes and SHA-256, every record's checksum, the signed checkpoint, and any "
        "inclusion proofs you add."
    )
    # One after another, not side by side: at 1024 px two columns cut the uploaders' hints.
    left = right = st.container()
    with left:
        file = _upload("Export file", "verify_file", EXPORT_TYPES, "The file as downloaded.")
        manifest = _upload(
            "Manifest (.manifest.json)", "verify_manifest", ["json"], "F.manifest.json"
        )
    with right:
        signature = _upload("Signature (.manifest.sig)", "verify_sig", ["sig"], "F.manifest.sig")
        proofs = _upload(
            "Inclusion proofs (optional)",
            "verify_proofs",
            ["json"],
            "One inclusion proof, or a JSON array of them, for records in the file.",
        )
    if file is None or manifest is None or signature is None:
        st.info("Add the export file, its manifest and its signature to check them.")
        return
    try:
        checks = service.verify_upload(file, manifest, signature, signer.public_pem(), proofs)
    except AuditError as exc:
        st.error(f"These files cannot be checked: {views.md(exc.message)}")
        return
    _verdict(checks)


def _verdict(checks: list[offline_verify.Check]) -> None:
    """Every check as a row of literal text, then one verdict."""
    st.dataframe(
        {
            "check": [c.name for c in checks],
            "result": ["✓" if c.ok else "✗" for c in checks],
            "reason": [c.reason for c in checks],
        },
        hide_index=True,
        width="stretch",
        height="content",
        column_config={
            "check": st.column_config.TextColumn(width="medium"),
            "result": st.column_config.TextColumn(width="small"),
            "reason": st.column_config.TextColumn(width="large"),
        },
    )
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        st.success(
            f"Verified: all {len(checks)} checks passed. The file is what this portal signed, "
            "for that query, at that point of the log.",
            icon=":material/verified:",
        )
        st.caption(
            "It does not prove that no matching record was left out: that rests on the "
            "portal's signature. Records ingested later with old timestamps are not in it."
        )
    else:
        st.error(
            f"Not verified: the check “{views.md(failed.name)}” failed, so the checks after "
            "it were not run.",
            icon=":material/gpp_bad:",
        )


def _tools(signer: Signer) -> None:
    """The public key, the JWKS and the verifier, each with how an auditor uses it."""
    st.header("Check it yourself")
    key, jwks, tool = st.container(), st.container(), st.container()  # whole labels at 1024 px
    with key:
        st.download_button(
            "Public key (PEM)",
            data=signer.public_pem(),
            file_name="portal.pub.pem",
            mime="application/x-pem-file",
            key="verify_key_pem",
            on_click="ignore",
            icon=":material/key:",
        )
        st.write("With nothing but OpenSSL, check that a manifest is the one the portal signed:")
        st.code(OPENSSL, language="bash", wrap_lines=True)
    with jwks:
        st.download_button(
            "Key set (JWKS)",
            data=json.dumps(signer.jwks(), indent=2).encode(),
            file_name="keys.json",
            mime="application/json",
            key="verify_key_jwks",
            on_click="ignore",
            icon=":material/data_object:",
        )
        st.write(
            "The same key as a JSON Web Key Set (as `GET /api/v1/audit/keys` serves it): "
            "pass it to the verifier's `--key` in place of the PEM."
        )
    with tool:
        st.download_button(
            "Verifier (offline_verify.py)",
            data=Path(offline_verify.__file__).read_bytes(),
            file_name="offline_verify.py",
            mime="text/x-python",
            key="verify_tool",
            on_click="ignore",
            icon=":material/terminal:",
        )
        st.write(
            "One file, Python 3.11 and the `cryptography` package only: it runs every check "
            "this page runs, on your machine, and exits 0 only when all pass."
        )
        st.code(VERIFIER_USE, language="bash", wrap_lines=True)


@st.fragment
def _prove(who: Principal) -> None:
    """A record id -> its inclusion proof, for records in the principal's namespaces."""
    st.header("Prove a record is in the log")
    st.write(
        "Paste a record id to get its inclusion proof (RFC 9162): the path from the record "
        "to a signed checkpoint of the log. Add it to the verifier with `--proofs`."
    )
    c_id, c_size = st.columns([3, 1])
    # Bound to ?record= (the key is the parameter's name): Explore's "Prove this record"
    # opens this page with it, and a copied link reopens the proof.
    rid = (
        c_id.text_input(
            "Record id", key=RECORD_PARAM, placeholder="audit-20260301-001", bind="query-params"
        )
        or ""
    ).strip()
    size = c_size.number_input(
        "At tree size (optional)",
        min_value=1,
        value=None,
        step=1,
        key="verify_size",
        help="Prove against an older tree, e.g. the checkpoint of your export.",
    )
    if not rid:
        return
    proof = _proof(who, rid, None if size is None else int(size))
    if proof is None:
        return
    text = json.dumps(proof, indent=2, ensure_ascii=False)
    st.code(text, language="json")
    st.download_button(
        "Download proof",
        data=text.encode(),
        file_name=f"{proof['id']}.proof.json",
        mime="application/json",
        key="verify_proof_download",
        on_click="ignore",
        icon=":material/download:",
    )


def _proof(who: Principal, rid: str, size: int | None) -> dict[str, Any] | None:
    ctx = common.ctx()
    try:
        # A proof may keep an on-demand checkpoint: a write, so a transaction.
        with ctx.engine.begin() as conn:
            return service.prove_record(conn, who, rid, size)
    except AuditError as exc:
        st.error(views.md(exc.message))
        return None


who = common.frame()
st.title("Verify")
signer = common.ctx().signer
if signer is None:
    st.error("This portal has no signing key loaded, so there is nothing to verify against.")
    st.stop()
_check_export(signer)
_tools(signer)
_prove(who)
