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
from joserfc.jwt import ClaimsOption

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
    part: str = "",
) -> str:
    """Return the relative URL of a job's download, signed for email for a few minutes.

    `part` "/manifest" or "/manifest.sig" signs the link of the file's manifest instead:
    the same signature opens the file and both halves of its evidence.
    """
    if part not in ("", "/manifest", "/manifest.sig"):
        raise ValueError(f"no download part {part!r}")
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
    return DOWNLOAD_URL.format(job_id=quote(job_id, safe="")) + f"{part}?sig={sig}"


def verify_download(
    sig: str | None, job_id: str, settings: Settings, now: datetime | None = None
) -> str:
    """Return the email a link was signed for; raise UnauthorizedError if it is not valid now.

    Refuses a missing, tampered, expired or not-yet-valid signature, one made with
    another key or algorithm, and one made for another job. The message says which claim
    is wrong, but every failure of the signature itself reads the same: which part of the
    check failed would help a forger, not the person holding the link.
    """
    if not sig:
        raise UnauthorizedError("this download link has no signature")
    try:
        token = jwt.decode(sig, _key(settings), algorithms=[ALGORITHM])
    except (JoseError, ValueError):
        raise UnauthorizedError(
            "this download link is not valid: it was altered or not signed by this portal"
        ) from None
    claims = token.claims
    expected = _expected(job_id)
    missing = [n for n, o in expected.items() if o.get("essential") and claims.get(n) is None]
    if missing:
        raise UnauthorizedError(f"this download link lacks its {', '.join(missing)} claim")
    # One claim at a time, in this order, so a link wrong in several ways gets one answer.
    for name, option in expected.items():
        if name not in claims:
            continue
        registry = jwt.JWTClaimsRegistry(now=_epoch(now), leeway=0, **{name: option})
        try:
            registry.validate({name: claims[name]})
        except JoseError as exc:
            raise UnauthorizedError(_refusal(name, exc)) from None
    email = claims["sub"]
    if not isinstance(email, str) or not email:  # validate_sub has refused these already
        raise UnauthorizedError(_REFUSALS["sub"])
    return email


def _expected(job_id: str) -> dict[str, ClaimsOption]:
    """The claims a link carries (nbf only if some signer added it), in checking order."""
    return {
        "aud": {"essential": True, "value": AUDIENCE},
        "iat": {"essential": True},
        "nbf": {"essential": False},
        "exp": {"essential": True},
        "job": {"essential": True, "value": job_id},
        "sub": {"essential": True},
    }


_NOT_YET = "this download link is not valid yet (its time is in the future: check the clocks)"
_REFUSALS = {
    "aud": "this is not a download link: it was made for another audience",
    "iat": _NOT_YET,
    "nbf": _NOT_YET,
    "exp": "this download link has expired; ask the portal for a new one",
    "job": "this download link was made for another export job",
    "sub": "this download link names no person",
}


def _refusal(name: str, exc: JoseError) -> str:
    """What is wrong with a claim, in words; a time that is not a number says so."""
    if name in ("iat", "nbf", "exp") and "NumericDate" in str(exc.description or ""):
        return f"this download link's {name} claim is not a time"
    return _REFUSALS[name]
