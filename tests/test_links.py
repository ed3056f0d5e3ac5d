"""Signed download links: bound to a job and a person, minutes long, tamper-evident."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from audit_core.access import UnauthorizedError
from audit_core.config import Settings
from audit_core.http import links

SETTINGS = Settings(secret_key="test-secret-key-0123456789abcdef0123456789")
JOB = "export-20261126-001"
WHEN = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def sig_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sig"][0]


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_link_points_at_the_download_route() -> None:
    url = links.sign_download(JOB, "alice@example.com", SETTINGS, now=WHEN)
    parts = urlsplit(url)
    assert parts.path == f"/api/v1/audit/export/download/{JOB}"
    assert not parts.scheme and not parts.netloc
    assert list(parse_qs(parts.query)) == ["sig"]


def test_a_fresh_link_names_its_person() -> None:
    sig = sig_of(links.sign_download(JOB, "alice@example.com", SETTINGS, now=WHEN))
    assert links.verify_download(sig, JOB, SETTINGS, now=WHEN) == "alice@example.com"
    later = WHEN + timedelta(minutes=9, seconds=59)
    assert links.verify_download(sig, JOB, SETTINGS, now=later) == "alice@example.com"


def test_claims_are_the_documented_ones() -> None:
    sig = sig_of(links.sign_download(JOB, "alice@example.com", SETTINGS, minutes=5, now=WHEN))
    header, payload, _ = sig.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    stamp = int(WHEN.timestamp())
    assert claims == {
        "sub": "alice@example.com",
        "job": JOB,
        "aud": "audit-download",
        "iat": stamp,
        "exp": stamp + 300,
    }
    assert json.loads(base64.urlsafe_b64decode(header + "==="))["alg"] == "HS256"


def test_an_expired_link_is_refused() -> None:
    sig = sig_of(links.sign_download(JOB, "alice@example.com", SETTINGS, now=WHEN))
    with pytest.raises(UnauthorizedError, match="expired"):
        links.verify_download(sig, JOB, SETTINGS, now=WHEN + timedelta(minutes=10))


def test_a_link_for_another_job_is_refused() -> None:
    sig = sig_of(links.sign_download(JOB, "alice@example.com", SETTINGS, now=WHEN))
    with pytest.raises(UnauthorizedError, match="made for another export job"):
        links.verify_download(sig, "export-20261126-002", SETTINGS, now=WHEN)


def _swap_payload(sig: str, **changes: object) -> str:
    header, payload, signature = sig.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join([header, _b64(claims), signature])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: _swap_payload(s, sub="mallory@example.com"),
        lambda s: _swap_payload(s, job="export-20261126-999"),
        lambda s: _swap_payload(s, exp=4_000_000_000),
        lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"),
        lambda s: s.rsplit(".", 1)[0] + ".",
        lambda s: _b64({"alg": "none", "typ": "JWT"}) + "." + s.split(".")[1] + ".",
        lambda s: "garbage",
        lambda s: "",
    ],
    ids=["sub", "job", "exp", "signature", "no-signature", "alg-none", "garbage", "empty"],
)
def test_a_tampered_link_is_refused(tamper: object) -> None:
    sig = sig_of(links.sign_download(JOB, "alice@example.com", SETTINGS, now=WHEN))
    with pytest.raises(UnauthorizedError) as err:
        links.verify_download(tamper(sig), JOB, SETTINGS, now=WHEN)  # type: ignore[operator]
    # Whatever broke the signature, the answer is the same: nothing for a forger to learn.
    assert err.value.message in (
        "this download link is not valid: it was altered or not signed by this portal",
        "this download link has no signature",
    )


def test_a_link_signed_with_another_secret_is_refused() -> None:
    other = Settings(secret_key="another-secret-key-0123456789abcdef012345")
    sig = sig_of(links.sign_download(JOB, "alice@example.com", other, now=WHEN))
    with pytest.raises(UnauthorizedError):
        links.verify_download(sig, JOB, SETTINGS, now=WHEN)


def test_a_link_signed_with_the_raw_server_secret_is_refused() -> None:
    # Links use a key derived from the secret; the secret itself signs nothing valid here.
    key = OctKey.import_key(SETTINGS.secret_key.encode())
    stamp = int(WHEN.timestamp())
    claims = {"sub": "a@x.io", "job": JOB, "aud": "audit-download", "iat": stamp, "exp": stamp + 60}
    sig = jwt.encode({"alg": "HS256"}, claims, key)
    with pytest.raises(UnauthorizedError):
        links.verify_download(sig, JOB, SETTINGS, now=WHEN)


def _signed(**claims: object) -> str:
    """A correctly signed link token with chosen claims (as if the key had leaked)."""
    stamp = int(WHEN.timestamp())
    base: dict[str, object] = {
        "sub": "a@x.io", "job": JOB, "aud": "audit-download", "iat": stamp, "exp": stamp + 60,
    }  # fmt: skip
    base.update(claims)
    return jwt.encode({"alg": "HS256"}, {k: v for k, v in base.items() if v is not None},
                      links._key(SETTINGS))  # fmt: skip


def test_the_forging_helper_makes_valid_links() -> None:
    assert links.verify_download(_signed(), JOB, SETTINGS, now=WHEN) == "a@x.io"


STAMP = int(WHEN.timestamp())


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"aud": "something-else"}, "made for another audience"),
        ({"aud": None}, "lacks its aud claim"),
        ({"job": None}, "lacks its job claim"),
        ({"job": "export-20261126-002"}, "made for another export job"),
        ({"sub": None}, "lacks its sub claim"),
        ({"sub": ""}, "names no person"),
        ({"exp": None}, "lacks its exp claim"),
        ({"exp": "soon"}, "exp claim is not a time"),
        ({"exp": STAMP}, "has expired"),
        ({"iat": STAMP + 3600, "exp": STAMP + 7200}, "not valid yet"),
        ({"nbf": STAMP + 30}, "not valid yet"),
        # Wrong in several ways: one answer, the first in a fixed order.
        ({"aud": "x", "job": "export-20261126-002", "exp": STAMP}, "another audience"),
        ({"job": "export-20261126-002", "exp": STAMP}, "has expired"),
    ],
    ids=["audience", "no-audience", "no-job", "other-job", "no-subject", "empty-subject",
         "no-expiry", "expiry-not-a-time", "expired", "issued-in-the-future", "not-before",
         "several-audience-first", "several-expiry-before-job"],
)  # fmt: skip
def test_a_signed_link_with_wrong_claims_says_what_is_wrong(
    claims: dict[str, object], says: str
) -> None:
    with pytest.raises(UnauthorizedError, match=says):
        links.verify_download(_signed(**claims), JOB, SETTINGS, now=WHEN)


@pytest.mark.parametrize("minutes", [0, 61])
def test_link_lifetime_is_minutes(minutes: int) -> None:
    with pytest.raises(ValueError):
        links.sign_download(JOB, "alice@example.com", SETTINGS, minutes=minutes)


def test_no_secret_means_no_links() -> None:
    with pytest.raises(ValueError, match="AUDIT_SECRET_KEY"):
        links.sign_download(JOB, "alice@example.com", Settings(secret_key=""))
