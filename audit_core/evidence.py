"""The log as evidence: its signing key, the Merkle tree in the database, checkpoints, proofs.

Placeholder while the tree storage is built: the signer and where it is found.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine

from . import signing
from .config import Settings


@dataclass(frozen=True)
class Signer:
    """The log's Ed25519 key and its origin line (DESIGN.md "Evidence")."""

    key: Ed25519PrivateKey
    origin: str

    @property
    def public(self) -> bytes:
        return signing.raw_public(self.key)

    @property
    def key_id(self) -> bytes:
        return signing.key_id(self.origin, self.public)


def load_signer(settings: Settings) -> Signer:
    """The signing key: AUDIT_SIGNING_KEY_FILE (must be readable), else made beside the secret."""
    if settings.signing_key_file is not None:
        key = signing.load_key(settings.signing_key_file)
    else:
        key = signing.load_or_create_key(settings.key_path)
    return Signer(key, settings.log_origin)


# The signer of each engine, so every append (whoever calls store.append) signs the new head.
_signers: weakref.WeakKeyDictionary[Engine, Signer] = weakref.WeakKeyDictionary()


def attach(engine: Engine, signer: Signer) -> None:
    """Make `signer` sign the tree heads of appends through `engine`."""
    _signers[engine] = signer


def signer_for(conn: Connection) -> Signer | None:
    """The signer attached to the connection's engine, if any."""
    return _signers.get(conn.engine)
