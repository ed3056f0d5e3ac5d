"""`keys`, `checkpoint`, `prove`: the log's public key, signed checkpoints and proofs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import evidence
from ..config import Settings
from ..errors import UsageError
from .common import open_engine


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Print the log's public key as JWKS, or as PEM with --pem."""
    signer = evidence.load_signer(settings)
    if args.pem:
        sys.stdout.write(signer.public_pem().decode())
    else:
        print(json.dumps(signer.jwks(), indent=2))
    return 0


def cmd_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    """Print a signed checkpoint (the current tree, or --size N), exactly the note's bytes."""
    engine = open_engine(settings)
    with engine.begin() as conn:
        note = evidence.note_at(conn, args.size)
    sys.stdout.write(note)
    return 0


def cmd_prove(args: argparse.Namespace, settings: Settings) -> int:
    """Print an inclusion proof for a record, or a consistency proof between two sizes."""
    engine = open_engine(settings)
    with engine.begin() as conn:
        if args.consistency is not None:
            first, *rest = args.consistency
            answer = evidence.consistency(conn, first, rest[0] if rest else None)
        else:
            if not args.record:
                raise UsageError("give a record id, or --consistency M [N]")
            answer = evidence.inclusion(conn, args.record, args.size)
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def register(sub: Any) -> None:
    """Add `keys`, `checkpoint` and `prove`."""
    k = sub.add_parser("keys", help="print the log's public signing key (JWKS, or --pem)")
    k.add_argument("--pem", action="store_true", help="PEM (SubjectPublicKeyInfo) instead")
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("checkpoint", help="print a signed checkpoint of the log")
    c.add_argument("--size", type=int, help="tree size (default: the current tree)")
    c.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("prove", help="print an inclusion or consistency proof (RFC 9162)")
    p.add_argument("record", nargs="?", metavar="RECORD_ID", help="record id to prove")
    p.add_argument("--size", type=int, help="tree size to prove against (default: current)")
    p.add_argument(
        "--consistency",
        nargs="+",
        type=int,
        metavar="M [N]",
        help="prove tree size M is a prefix of N (default: the newest)",
    )
    p.set_defaults(func=cmd_prove)
