"""Thin export entry point for the benchmark: one export, whole process, no audit event.

    python bench/run_export.py URL FORMAT [--from T] [--to T] [--action A] [--user U]
                               [--namespace N] [--upto-seq S] [-o FILE]

Does exactly what `python -m audit_core export` does for the bytes (export.plan, then
export.chunks written to the file) but skips the migration check and the audit record
that the CLI writes after each export, so the cached benchmark database never changes.
Prints the row count on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit_core import export  # noqa: E402
from audit_core.db import make_engine  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("format")
    ap.add_argument("--from", dest="start")
    ap.add_argument("--to", dest="end")
    ap.add_argument("--action")
    ap.add_argument("--user")
    ap.add_argument("--namespace")
    ap.add_argument("--upto-seq", type=int)
    ap.add_argument("-o", "--output", default="/dev/null")
    a = ap.parse_args()
    flt = AuditFilter.parse(
        start=a.start, end=a.end, action=a.action, user=a.user, namespace=a.namespace
    )
    engine = make_engine(a.url)
    with engine.connect() as conn, open(a.output, "wb") as out:
        p = export.plan(conn, flt, a.format, upto_seq=a.upto_seq)
        write = out.write
        for chunk in export.chunks(conn, p):
            write(chunk)
    print(p.total, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
