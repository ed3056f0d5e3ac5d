"""The OpenAPI 3.1 document of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to `routes.py`, from the code's own constants (formats, job states,
the job-id pattern, parameter limits), and checked against the live routes by schemathesis
(bench/schemathesis_run.py and tests/test_api_server.py).
"""

from __future__ import annotations

from typing import Any

from ..filters import FORMATS, MAX_PARAM
from ..formats import FORMULA_LEAD
from ..jobs import JOB_ID_PATTERN, STATES
from ..record import CHECKED_FIELDS, DEFAULT_MAX, FIELDS, FREE_TEXT, MAX_FIELD
from .documents import DOWNLOAD_PATH, JOB_PATH, MANIFEST_PATH, PREFIX

# The seed's own window: every example must be a request the API accepts (from < to).
FROM_EXAMPLE = "2026-03-01T00:00:00Z"
TO_EXAMPLE = "2026-03-19T16:00:00Z"
NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"  # the filter refuses control characters
# Exactly what record.format_instant writes: UTC, Z, a fraction only when not zero (and
# without trailing zeros). Never `format: date-time`: a generated client would parse the
# text into a datetime and write it back differently, and a checksum covers the text.
INSTANT_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,5}[1-9])?Z$"
_CONTROL_NAMES = {"\t": "TAB", "\r": "CR", "\n": "LF"}
FORMULA_RULE = (
    "In CSV, a cell of a free-text field ("
    + ", ".join(FREE_TEXT)
    + ") that starts with "
    + " ".join(_CONTROL_NAMES.get(c, c) for c in FORMULA_LEAD)
    + " is written with one ' before it, so a spreadsheet does not run it as a formula; "
    "ingesting a CSV file removes one leading ' from every free-text cell that has one. "
    "JSON and JSON Lines carry the values as stored; the checksum covers the stored value."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


def _error(description: str, *headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Status")}},
    }
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return out


def _text_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "maxLength": MAX_PARAM, "pattern": NO_CONTROL},
    }


def _job_id_param() -> dict[str, Any]:
    return {
        "name": "jobId",
        "in": "path",
        "required": True,
        "description": "The job's id, as in `metadata.jobId` (export-YYYYMMDD-NNN).",
        "schema": {"type": "string", "maxLength": 40, "example": "export-20260319-001"},
    }


_COMMON_ERRORS = {
    "401": _error("Missing, malformed, unknown, expired or revoked token.", "WWW-Authenticate"),
    "405": _error("Only GET and HEAD are served (HEAD: GET's status and headers).", "Allow"),
    "431": _error("The request's header fields are too large."),
    "500": _error("The server failed; the message gives a reference, never a traceback."),
}


def instant(description: str, *, nullable: bool = False) -> dict[str, Any]:
    """The schema of an instant the API writes: a string in format_instant's exact form."""
    kind: str | list[str] = ["string", "null"] if nullable else "string"
    return {"type": kind, "pattern": INSTANT_PATTERN, "description": description}


def _record_schema() -> dict[str, Any]:
    """AuditRecord: the seed's fields, each as long as ingest lets it be (record.MAX_FIELD)."""
    props: dict[str, Any] = {
        f: {"type": "string", "maxLength": MAX_FIELD.get(f, DEFAULT_MAX)} for f in CHECKED_FIELDS
    }
    props["timestamp"] = {
        **instant("UTC, as the checksum covers it: keep the text, do not re-format it."),
        "maxLength": MAX_FIELD.get("timestamp", DEFAULT_MAX),
    }
    props["checksum"] = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
    for f in FREE_TEXT:
        props[f]["description"] = "Free text: in CSV, see AuditRecord's formula rule."
    return {
        "type": "object",
        "description": "One audit record. " + FORMULA_RULE,
        "required": list(FIELDS),
        "properties": props,
    }


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document (a fresh dict each call)."""
    export_params = [
        {
            "name": "format",
            "in": "query",
            "required": False,
            "description": "Export format: csv (default), json (the AuditExport envelope) "
            "or jsonl (JSON Lines, one record per line). " + FORMULA_RULE,
            "schema": {"type": "string", "enum": list(FORMATS), "default": "csv"},
        },
        {
            "name": "from",
            "in": "query",
            "required": False,
            "description": "Start instant, ISO 8601, inclusive (a date alone means 00:00:00Z). "
            "Default: the earliest record.",
            "schema": {"type": "string", "format": "date-time", "example": FROM_EXAMPLE},
        },
        {
            "name": "to",
            "in": "query",
            "required": False,
            "description": "End instant, ISO 8601, exclusive; must be later than from. "
            "Default: now.",
            "schema": {"type": "string", "format": "date-time", "example": TO_EXAMPLE},
        },
        _text_param(
            "action",
            "Filter by action type: exact, comma list, or a family wildcard such as runbook.*",
        ),
        _text_param("user", "Filter by user: exact, case-insensitive; comma list."),
        _text_param(
            "namespace",
            "Filter by namespace: exact; comma list; must lie within the token's grants.",
        ),
    ]
    file_content = {  # application/json first: generated clients take the first
        "application/json": {"schema": _ref("AuditExport")},
        "text/csv; charset=utf-8": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
    }
    job_content = {"application/json": {"schema": _ref("AuditExportJob")}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Audit Export Portal API",
            "version": "v1",
            "description": "Exports the audit log in CSV, JSON or JSON Lines for compliance "
            "and external analysis. Exports over the synchronous limit (10,000 records by "
            "default) become background jobs: 202 Accepted with a download link.",
        },
        "servers": [{"url": PREFIX}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "Audit", "description": "Export Audit"},
            {"name": "Evidence", "description": "Keys, checkpoints, proofs and manifests"},
        ],
        "paths": {
            "/audit/export": {
                "get": {
                    "operationId": "exportAuditLog",
                    "summary": "Export Audit Log",
                    "description": "Exports the audit log in CSV or JSON format for "
                    "compliance and external analysis. Every export is itself audited.",
                    "tags": ["Audit"],
                    "parameters": export_params,
                    "responses": {
                        "200": {
                            "description": "The export, streamed.",
                            "headers": {
                                "Content-Disposition": {
                                    "$ref": "#/components/headers/Content-Disposition"
                                },
                                "X-Total-Records": {"$ref": "#/components/headers/X-Total-Records"},
                            },
                            "content": file_content,
                        },
                        "202": {
                            "description": "Over the synchronous limit: queued as a job.",
                            "headers": {
                                "Location": _header("The job's status URL."),
                                "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                            },
                            "content": job_content,
                        },
                        "400": _error("A parameter is not valid; the message says which."),
                        "403": _error("The token's role or namespace grants forbid this."),
                        "429": _error(
                            "Too many streams or queued jobs for this token, or too many "
                            "refusals (403) for this token or address.",
                            "Retry-After",
                        ),
                        **_COMMON_ERRORS,
                    },
                }
            },
            JOB_PATH.replace("{job_id}", "{jobId}"): {
                "get": {
                    "operationId": "getExportJob",
                    "summary": "Export job status",
                    "tags": ["Audit"],
                    "parameters": [_job_id_param()],
                    "responses": {
                        "200": {
                            "description": "The job and its progress. While it is queued or "
                            "processing, Retry-After says when its file is expected.",
                            "headers": {
                                "Retry-After": {"$ref": "#/components/headers/Retry-After"}
                            },
                            "content": job_content,
                        },
                        "400": _error("An unexpected query parameter."),
                        "404": _error("No such job, or not one this token may see."),
                        "429": _error(
                            "Too many refusals (403) for this token or address.", "Retry-After"
                        ),
                        **_COMMON_ERRORS,
                    },
                }
            },
            DOWNLOAD_PATH.replace("{job_id}", "{jobId}"): {
                "get": _download_operation(file_content, job_content)
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _error("An unexpected query parameter."),
                        "405": _COMMON_ERRORS["405"],
                        "431": _COMMON_ERRORS["431"],
                    },
                }
            },
            **evidence_paths(),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Bearer token issued by the operator. "
                    "Format: Authorization: Bearer <token>. The token alone, "
                    "Authorization: <token> (as the seed's example sends it), is accepted "
                    "too, with the same checks; any other scheme is refused (401).",
                },
                "signedLink": {"type": "apiKey", "in": "query", "name": "sig"},
            },
            "headers": {
                "WWW-Authenticate": _header("The Bearer challenge (RFC 6750)."),
                "Allow": {"description": "Allowed methods.", "schema": {"type": "string"}},
                "Retry-After": _header("Seconds to wait before asking again.", "integer"),
                "Content-Disposition": _header(
                    'attachment; filename="audit-export-YYYYMMDD.<ext>"'
                ),
                "X-Total-Records": _header("How many records the file holds.", "integer"),
                "ETag": _header('The file\'s SHA-256, a strong ETag: "sha256-<hex>".'),
                "Content-Range": _header("bytes */size: the file's size in bytes."),
            },
            "schemas": {
                "Status": {
                    "type": "object",
                    "required": ["apiVersion", "kind", "status", "code", "reason", "message"],
                    "properties": {
                        "apiVersion": {"const": "v1"},
                        "kind": {"const": "Status"},
                        "status": {"const": "Failure"},
                        "code": {"type": "integer"},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
                "AuditRecord": _record_schema(),
                "AuditExport": {
                    "type": "object",
                    "required": ["apiVersion", "kind", "metadata", "records"],
                    "properties": {
                        "apiVersion": {"const": "v1"},
                        "kind": {"const": "AuditExport"},
                        "metadata": {
                            "type": "object",
                            "required": ["exportedAt", "from", "to", "totalRecords", "format"],
                            "properties": {
                                "exportedAt": instant("When the export was cut."),
                                "from": instant(
                                    "null when no record matched and no from was given",
                                    nullable=True,
                                ),
                                "to": instant("The end of the window, exclusive."),
                                "totalRecords": {"type": "integer", "minimum": 0},
                                "format": {"const": "json"},
                                "filter": {"type": "string"},
                            },
                        },
                        "records": {"type": "array", "items": _ref("AuditRecord")},
                    },
                },
                "AuditExportJob": {
                    "type": "object",
                    "required": ["apiVersion", "kind", "metadata", "status"],
                    "properties": {
                        "apiVersion": {"const": "v1"},
                        "kind": {"const": "AuditExportJob"},
                        "metadata": {
                            "type": "object",
                            "required": ["jobId"],
                            "properties": {"jobId": {"type": "string", "pattern": JOB_ID_PATTERN}},
                        },
                        "status": {
                            "type": "object",
                            "required": ["state", "estimatedRecords", "downloadUrl", "expiresAt"],
                            "properties": {
                                "state": {"enum": list(STATES)},
                                "estimatedRecords": {"type": "integer", "minimum": 0},
                                "downloadUrl": {"type": "string"},
                                "expiresAt": instant(
                                    "When the file expires. Until the job completes: its "
                                    "queue time plus the TTL, the earliest it can expire "
                                    "(the same on every poll); completion sets the real "
                                    "expiry. null for a failed or cancelled job.",
                                    nullable=True,
                                ),
                                "rowsWritten": {"type": "integer", "minimum": 0},
                                "fileSize": {"type": ["integer", "null"]},
                                "sha256": {"type": ["string", "null"]},
                                "attempts": {"type": "integer", "minimum": 0},
                                "maxAttempts": {"type": "integer", "minimum": 1},
                                "error": {
                                    "type": "string",
                                    "description": "why the job failed, or why its last "
                                    "attempt did while it waits to retry",
                                },
                                "retryAt": instant(
                                    "when a job queued after a failed attempt may run again"
                                ),
                            },
                        },
                    },
                },
            },
        },
    }


def _request_header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _download_operation(file_content: dict[str, Any], job_content: dict[str, Any]) -> Any:
    """GET /audit/export/download/{jobId}: the file, whole, in part, or not at all (304)."""
    file_headers = {
        "Accept-Ranges": _header("bytes: a download may be resumed with Range."),
        "Content-Disposition": {"$ref": "#/components/headers/Content-Disposition"},
        "ETag": {"$ref": "#/components/headers/ETag"},
        "Repr-Digest": _header("RFC 9530, of the whole file: sha-256=:<base64>:"),
        "X-Total-Records": {"$ref": "#/components/headers/X-Total-Records"},
    }
    content = {
        **file_content,
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
    }
    sig = {
        "name": "sig",
        "in": "query",
        "required": False,
        "description": "A portal-signed download link's signature.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PARAM},
    }
    return {
        "operationId": "downloadExport",
        "summary": "Download an export job's file",
        "description": "Streams the finished file. While the job is not finished the answer "
        "is 202 with the job document and Retry-After, so a script may poll this URL. Portal "
        "links carry a short-lived signature in `sig` instead of a bearer token. A cut-off "
        "download resumes with one byte Range (`curl -C -`); If-None-Match with the ETag "
        "answers 304. Every download that sends bytes is audited (a part names its bytes).",
        "tags": ["Audit"],
        "parameters": [
            _job_id_param(),
            sig,
            _request_header(
                "Range",
                "One byte range: bytes=first-last, bytes=first- or bytes=-suffix. Several "
                "ranges, or another unit, get the whole file (200).",
            ),
            _request_header(
                "If-Range", "The ETag the part is to come from; any other value: the whole file."
            ),
            _request_header("If-None-Match", "ETags held (or *): 304 when one is the file's."),
        ],
        "security": [{"bearerAuth": []}, {"signedLink": []}],
        "responses": {
            "200": {
                "description": "The whole file.",
                "headers": {
                    **file_headers,
                    "Content-Length": _header("The file's size in bytes.", "integer"),
                },
                "content": content,
            },
            "202": {
                "description": "Not ready yet: the job document.",
                "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                "content": job_content,
            },
            "302": {
                "description": "With object storage (AUDIT_EXPORT_STORAGE): the file is "
                "fetched from the store. Location is a presigned URL of this one file, valid "
                "300 seconds, that needs no token (send none to it); the store answers Range "
                "itself. Made after the same checks as a 200, and a GET is audited as the "
                "download when the link is handed out; HEAD gets a link for HEAD, unaudited.",
                "headers": {"Location": _header("The presigned URL of the file in the store.")},
            },
            "206": {
                "description": "The one byte range asked for.",
                "headers": {
                    **file_headers,
                    "Content-Range": _header("bytes first-last/size"),
                    "Content-Length": _header("The part's size in bytes.", "integer"),
                },
                "content": content,
            },
            "304": {
                "description": "If-None-Match named the file's ETag: no body.",
                "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
            },
            "400": _error("An unexpected query parameter."),
            "403": _error(
                "The caller may no longer read all the job reads (role or namespace grants "
                "changed since it was queued)."
            ),
            "404": _error("No such job, or not one this caller may see."),
            "409": _error("The job failed or was cancelled: there is no file."),
            "410": _error("The job's file has expired and was removed."),
            "416": _error(
                "The Range is not one byte range, or starts past the end of the file.",
                "Content-Range",
            ),
            "429": _error(
                "Too many streams for this token, or too many refusals (403) for this token "
                "or address.",
                "Retry-After",
            ),
            "503": _error(
                "With object storage: the store could not be reached or refused the portal "
                "(the message says which); nothing was handed out and nothing audited. Try "
                "again later."
            ),
            **_COMMON_ERRORS,
        },
    }


def _size_param(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    }


def _evidence_get(
    operation: str,
    summary: str,
    description: str,
    ok: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for code, why in (errors or {}).items():
        responses[code] = _error(why)
    responses.update(_COMMON_ERRORS)
    if security == []:
        responses.pop("401")
    op: dict[str, Any] = {
        "operationId": operation,
        "summary": summary,
        "description": description,
        "tags": ["Evidence"],
        "parameters": parameters or [],
        "responses": responses,
    }
    if security is not None:
        op["security"] = security
    return {"get": op}


def evidence_paths() -> dict[str, Any]:
    """The evidence routes (DESIGN.md "Evidence"): keys, checkpoints, proofs, manifests."""
    note = {"text/plain; charset=utf-8": {"schema": {"type": "string"}}}
    proof = {"application/json": {"schema": {"type": "object"}}}
    manifest = {"application/json": {"schema": {"type": "object"}}}
    signature = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    bad = {"400": "A malformed or unexpected query parameter."}
    job = DOWNLOAD_PATH.replace("{job_id}", "{jobId}")
    sig_param = {
        "name": "sig",
        "in": "query",
        "required": False,
        "description": "A portal-signed download link's signature (the file's own link).",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PARAM},
    }
    export_param = {
        "name": "exportId",
        "in": "path",
        "required": True,
        "description": 'The export\'s id, as in the `Link: <...>; rel="describedby"` header.',
        "schema": {"type": "string", "maxLength": 64, "example": "export-20260319-001"},
    }
    missing = {**bad, "404": "No such manifest (yet), or not one this caller may read."}
    job_missing = {
        **missing,
        "403": "The caller may no longer read all the job reads.",
        "429": "Too many refusals for this token or address.",
    }
    return {
        "/audit/keys": _evidence_get(
            "getSigningKeys",
            "The log's public keys (JWKS)",
            "The Ed25519 key that signs checkpoints and manifests, as a JWK Set (OKP, "
            "Ed25519, kid = the note key id). Public: no token needed.",
            {"description": "A JWK Set.", "content": {"application/json": {"schema": {}}}},
            security=[],
            errors=bad,
        ),
        "/audit/checkpoint": _evidence_get(
            "getCheckpoint",
            "A signed checkpoint of the log",
            "The C2SP signed note of the tree now, or at ?size=N (a kept one, or made "
            "on demand): the exact bytes, ending in the signature lines.",
            {"description": "The signed note.", "content": note},
            parameters=[_size_param("size", "A tree size up to the current one.")],
            errors={**bad, "404": "No tree of that size."},
        ),
        "/audit/proof/inclusion": _evidence_get(
            "getInclusionProof",
            "Prove a record is in the log",
            "RFC 9162 inclusion proof of a record's leaf in the tree at ?size= (default: "
            "now), with the checkpoint it is checked against. A record outside the caller's "
            "grants answers 404, like an unknown id.",
            {"description": "The proof.", "content": proof},
            parameters=[
                {
                    "name": "id",
                    "in": "query",
                    "required": True,
                    "description": "The record's id.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PARAM},
                },
                _size_param("size", "The tree size to prove against."),
            ],
            errors={**bad, "404": "No such record visible to the caller, or no such size."},
        ),
        "/audit/proof/consistency": _evidence_get(
            "getConsistencyProof",
            "Prove the log only grew",
            "RFC 9162 consistency proof that the tree at ?from=M is a prefix of the tree "
            "at ?to=N (default: now).",
            {"description": "The proof.", "content": proof},
            parameters=[
                _size_param("from", "The older tree size.", required=True),
                _size_param("to", "The newer tree size."),
            ],
            errors={**bad, "404": "No tree of that size."},
        ),
        job + "/manifest": _evidence_get(
            "getJobManifest",
            "A job file's signed manifest",
            "The manifest's exact bytes (the signature covers them as they are).",
            {"description": "The manifest.", "content": manifest},
            parameters=[_job_id_param(), sig_param],
            security=[{"bearerAuth": []}, {"signedLink": []}],
            errors=job_missing,
        ),
        job + "/manifest.sig": _evidence_get(
            "getJobManifestSignature",
            "The raw Ed25519 signature of a job file's manifest",
            "64 bytes; `openssl pkeyutl -verify -rawin` checks it against the manifest.",
            {"description": "The signature.", "content": signature},
            parameters=[_job_id_param(), sig_param],
            security=[{"bearerAuth": []}, {"signedLink": []}],
            errors=job_missing,
        ),
        MANIFEST_PATH.replace("{export_id}", "{exportId}"): _evidence_get(
            "getExportManifest",
            "A streamed export's signed manifest",
            "Signed once the stream's last byte has left; the requester's or an admin's.",
            {"description": "The manifest.", "content": manifest},
            parameters=[export_param],
            errors=missing,
        ),
        MANIFEST_PATH.replace("{export_id}", "{exportId}") + ".sig": _evidence_get(
            "getExportManifestSignature",
            "The raw Ed25519 signature of a streamed export's manifest",
            "64 bytes, over the manifest's exact bytes.",
            {"description": "The signature.", "content": signature},
            parameters=[export_param],
            errors=missing,
        ),
    }
