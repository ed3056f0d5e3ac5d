"""Short-lived signed download links for export jobs (JWT, HS256, Authlib's joserfc).

The portal hands the browser a link to the API's download route carrying a signature
bound to the job and the person, minutes long, so a large file goes straight from the
HTTP route to the browser (never through the Streamlit socket) and no API token ever
sits in the browser.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from ..config import Settings
from ..errors import UnauthorizedError
from .documents import DOWNLOAD_URL

AUDIENCE = "audit-download"
ALGORITHM = "HS256"
MAX_MINUTES = 60


def _key(settings: Settings) -> OctKey:
    """A key derived for links only, so the server secret is never used raw for two jobs."""
    if not settings.secret_key:
        raise ValueError("no secret key: set AUDIT_SECRET_KEY to sign download links")
    derived = hmac.new(
        settings.secret_key.encode("utf-8"), b"audit-download-link", hashlib.sha256
    ).digest()
    return OctKey.import_key(derived)


def _epoch(now: datetime | None) -> int:
    return int((now or datetime.now(UTC)).timestamp())


def sign_download(
    job_id: str,
    email: str,
    settings: Settings,
    *,
    minutes: int = 10,
    now: datetime | None = None,
) -> str:
    """Return the relative URL of a job's download, signed for email for a few minutes."""
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"a download link lasts 1 to {MAX_MINUTES} minutes")
    issued = now or datetime.now(UTC)
    claims = {
        "sub": email,
        "job": job_id,
        "aud": AUDIENCE,
        "iat": _epoch(issued),
        "exp": _epoch(issued + timedelta(minutes=minutes)),
    }
    sig = jwt.encode({"alg": ALGORITHM}, claims, _key(settings), algorithms=[ALGORITHM])
    return DOWNLOAD_URL.format(job_id=quote(job_id, safe="")) + f"?sig={sig}"


def verify_download(
    sig: str | None, job_id: str, settings: Settings, now: datetime | None = None
) -> str:
    """Return the email a link was signed for; raise UnauthorizedError if it is not valid now.

    Refuses a missing, tampered, expired or not-yet-valid signature, one made with
    another key or algorithm, and one made for another job.
    """
    if not sig:
        raise UnauthorizedError("this download link has no signature")
    try:
        token = jwt.decode(sig, _key(settings), algorithms=[ALGORITHM])
    except (JoseError, ValueError):
        raise UnauthorizedError("this download link is not valid") from None
    registry = jwt.JWTClaimsRegistry(
        now=_epoch(now),
        leeway=0,
        sub={"essential": True},
        job={"essential": True, "value": job_id},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        iat={"essential": True},
    )
    try:
        registry.validate(token.claims)
    except JoseError as exc:
        if getattr(exc, "error", "") == "expired_token":
            raise UnauthorizedError(
                "this download link has expired; ask the portal for a new one"
            ) from None
        raise UnauthorizedError("this download link is not valid for this job") from None
    email = token.claims["sub"]
    if not isinstance(email, str) or not email:
        raise UnauthorizedError("this download link is not valid")
    return email
