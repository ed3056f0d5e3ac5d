"""The log's commands: init, demo, ingest, export, deliver, verify."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .. import evidence, manifests, signing, store
from .. import export as export_mod
from .. import ingest as ingest_mod
from ..config import Settings, delivery_filter
from ..db import refresh_statistics
from ..errors import UsageError
from ..filters import AuditFilter, parse_format
from ..formats import filename
from ..integrity import verify
from ..pipeline import Pipeline
from .common import actor, open_engine


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create or migrate the database."""
    open_engine(settings)
    print(f"database ready: {settings.engine_kind}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Add generated demo records."""
    from ..demo import generate

    engine = open_engine(settings)
    bar = _progress(args.records, "demo")
    with engine.begin() as conn:
        added = store.append(conn, _counting(generate(args.records, seed=args.seed), bar))
    bar.close()
    refresh_statistics(engine)
    print(f"added {added} demo records", file=sys.stderr)
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Load records from files; a file with any bad record is refused whole."""
    from .common import cli_principal

    engine = open_engine(settings)
    who = cli_principal()
    for name in args.files:
        with _source(name, args.format) as (opener, fmt, label):
            bar = _progress(None, label)
            try:
                report = ingest_mod.ingest(
                    engine,
                    opener,
                    fmt,
                    name=label,
                    principal=who,
                    settings=settings,
                    progress=bar_setter(bar),
                )
            except ingest_mod.IngestError as exc:
                bar.close()
                for pos, reason in exc.problems[1:]:  # the first is in the error line
                    print(f"{label}: {f'record {pos}: ' if pos else ''}{reason}", file=sys.stderr)
                raise UsageError(f"{label}: refused: {exc.message}") from None
            bar.close()
        if report.added:
            refresh_statistics(engine)
        print(
            f"{label}: {report.total} records, {report.added} added, "
            f"{report.already_stored} already stored",
            file=sys.stderr,
        )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write matching records to stdout or a file, with a signed manifest beside the file."""
    fmt = parse_format(args.format)
    flt = AuditFilter.parse(
        start=args.start,
        end=args.end,
        action=args.action,
        user=args.user,
        namespace=args.namespace,
    )
    description = _description(args)
    engine = open_engine(settings)
    to_file = bool(args.output and args.output != "-")
    with engine.connect() as conn:
        plan = export_mod.plan(conn, flt, fmt)
        if to_file:
            target = Path(args.output)
            tmp = target.with_name(target.name + ".part")
            with open(tmp, "wb") as out:
                sink = _write(conn, plan, out)
            tmp.replace(target)
        else:
            sink = _write(conn, plan, sys.stdout.buffer)
    signed = None
    if not args.no_manifest and (to_file or args.manifest):
        name = Path(args.output).name if to_file else filename(fmt, plan.exported_at)
        requester = manifests.Requester(actor(), "admin", "cli")
        signed = manifests.sign(
            engine,
            plan,
            requester,
            description=description,
            file_name=name,
            file_bytes=sink.size,
            file_sha256=sink.hexdigest(),
        )
        where = (
            manifests.paths_for(Path(args.manifest))
            if args.manifest
            else manifests.paths_beside(Path(args.output))
        )
        manifests.write(signed, *where)
    with engine.begin() as conn:
        store.log_event(
            conn,
            action="audit.export",
            user=actor(),
            role="admin",
            resource=f"{fmt} {plan.total} rows; {plan.filter.describe()}"
            + (f"; {signed.export_id}" if signed else "")
            + f"; {description}",
            resource_type="AuditExport",
            namespace=settings.self_namespace,
            source_ip="local",
        )
    print(f"exported {plan.total} records", file=sys.stderr)
    return 0


def _write(conn: Any, plan: export_mod.ExportPlan, out: IO[bytes]) -> signing.HashingSink:
    """Write the export's bytes to out, hashing them on the way (for the manifest)."""
    sink = signing.HashingSink(out)
    with Pipeline(sink.write) as writing:  # hashing and writing overlap building
        for chunk in export_mod.chunks(conn, plan):
            writing.put(chunk)
    sink.flush()
    return sink


def _description(args: argparse.Namespace) -> str:
    """The parameters as given, for the manifest and the audit record."""
    given = [("format", args.format), ("from", args.start), ("to", args.end)]
    given += [("action", args.action), ("user", args.user), ("namespace", args.namespace)]
    return " ".join(f"{k}={v}" for k, v in given if v is not None)


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Check every record, the chain, the Merkle tree and its signed heads; exit 1 naming
    the first thing that broke."""
    engine = open_engine(settings)
    if args.recount:
        with engine.begin() as conn:
            counted, rows = store.day_count_totals(conn)
            store.rebuild_day_counts(conn)
        print(
            f"day counts rebuilt from the records: they accounted for {counted} records, "
            f"the log holds {rows}"
            + ("" if counted == rows else f" ({abs(rows - counted)} not accounted for)")
        )
    with engine.connect() as conn:
        result = verify(conn)
        kept = evidence.checkpoint_count(conn)
    if result.ok:
        print(
            f"ok: {result.checked} records: checksums, search columns, hash chain, Merkle "
            f"tree, signed head, {kept} kept checkpoints and day counts intact"
        )
        return 0
    where = f"record {result.bad_id}" if result.bad_id else result.place
    print(f"FAILED at {where}: {result.reason} ({result.checked} records verified before it)")
    return 1


def _progress(total: int | None, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=label,
        unit=" rec",
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        mininterval=0.5,
    )


def bar_setter(bar: Any) -> Callable[[int], None]:
    """A progress callback that moves bar to an absolute count."""
    return lambda n: bar.update(n - bar.n)


def _counting(items: Any, bar: Any) -> Any:
    for i, item in enumerate(items, 1):
        if i % 5000 == 0:
            bar.update(5000)
        yield item


class _source:  # noqa: N801 - used as a context manager
    """Open a named file, or spool stdin ('-') to a temporary file so it can be read twice."""

    def __init__(self, name: str, fmt: str | None) -> None:
        self.name, self.fmt = name, fmt
        self.tmp: Any = None

    def __enter__(self) -> tuple[Callable[[], IO[bytes]], str, str]:
        if self.name == "-":
            if not self.fmt:
                raise UsageError("reading stdin needs --format json|jsonl|csv")
            self.tmp = tempfile.NamedTemporaryFile(prefix="audit-ingest-")  # noqa: SIM115
            while chunk := sys.stdin.buffer.read(1 << 20):
                self.tmp.write(chunk)
            self.tmp.flush()
            path = Path(self.tmp.name)
            label = "stdin"
        else:
            path = Path(self.name)
            if not path.is_file():
                raise UsageError(f"{self.name}: no such file")
            label = self.name
        try:
            fmt = ingest_mod.detect_format(self.name if self.name != "-" else "", self.fmt)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return ingest_mod.opener_for(path), fmt, label

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.close()


def cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    """Deliver the log's new leaves to a folder or a bucket as signed segments (once, or
    --every N s); the destination is `--to`, read into settings.delivery_to; --action,
    --user and --namespace (as `export` reads them) keep only the matching records."""
    import signal
    import threading

    from .. import delivery
    from .common import cli_principal

    target = settings.delivery_to
    if target is None:  # argparse requires --to: only a caller of cmd_deliver itself
        raise UsageError("deliver needs --to DIR or --to s3://bucket/prefix")
    if args.filter is not None:
        if args.action or args.user or args.namespace:
            raise UsageError("give --filter or --action/--user/--namespace, not both")
        flt = delivery_filter(args.filter, name="--filter")
    else:
        flt = AuditFilter.parse(action=args.action, user=args.user, namespace=args.namespace)
    flt = delivery.normal_filter(flt)
    delivery.check(target, setting="--to")
    engine = open_engine(settings)
    evidence.require_signer(engine)
    where = delivery.destination(target).label
    stop = threading.Event()
    if args.every is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while True:
        try:
            for seg in delivery.deliver(
                engine, target, cli_principal(), settings, max_records=args.max_records, flt=flt
            ):
                held = "" if flt is None else f", {seg.count} matching records"
                print(f"{where}/{seg.name}: leaves {seg.first}-{seg.last}{held}", file=sys.stderr)
        except delivery.DeliveryBusyError as busy:
            if args.every is None:
                raise
            print(f"{busy.message}; trying again in {args.every:g}s", file=sys.stderr)
        if args.every is None or stop.wait(args.every):
            return 0


def _positive_seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds, e.g. 60s")
    return value


def register(sub: Any) -> None:
    """Add `init`, `demo`, `ingest`, `export`, `deliver` and `verify`."""
    sub.add_parser("init", help="create or migrate the database").set_defaults(func=cmd_init)

    d = sub.add_parser("demo", help="add generated demo records")
    d.add_argument("--records", type=int, default=50_000, help="how many (default 50000)")
    d.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("ingest", help="load .json (seed envelope), .jsonl or .csv files")
    i.add_argument("files", nargs="+", metavar="FILE", help="files to load; '-' reads stdin")
    i.add_argument("--format", choices=ingest_mod.FORMATS, help="format (needed for stdin)")
    i.set_defaults(func=cmd_ingest)

    e = sub.add_parser("export", help="export matching records")
    e.add_argument("--format", default="csv", help="csv, json or jsonl (default csv)")
    e.add_argument("--from", dest="start", help="ISO 8601 start, inclusive")
    e.add_argument("--to", dest="end", help="ISO 8601 end, exclusive (default now)")
    e.add_argument("--action", help="actions, comma-separated; family.* for a family")
    e.add_argument("--user", help="users, comma-separated, any case")
    e.add_argument("--namespace", help="namespaces, comma-separated")
    e.add_argument("-o", "--output", help="file to write (default stdout)")
    e.add_argument(
        "--manifest",
        metavar="PATH",
        help="where to write the signed manifest (default: FILE.manifest.json beside -o FILE)",
    )
    e.add_argument(
        "--no-manifest", action="store_true", help="write no signed manifest and signature"
    )
    e.set_defaults(func=cmd_export)

    dl = sub.add_parser(
        "deliver", help="deliver the log to a folder or a bucket as signed segments"
    )
    dl.add_argument(
        "--to",
        dest="delivery_to",
        required=True,
        metavar="DIR|s3://BUCKET/PREFIX",
        help="the folder, or the S3-compatible bucket and prefix, to deliver to",
    )
    dl.add_argument(
        "--every", type=_positive_seconds, metavar="SECONDS", help="keep delivering (60s, 300)"
    )
    dl.add_argument(
        "--max-records", type=int, default=100_000, help="leaves per segment (default 100000)"
    )
    dl.add_argument(
        "--action", help="deliver only these actions, comma-separated; family.* for a family"
    )
    dl.add_argument("--user", help="deliver only these users, comma-separated, any case")
    dl.add_argument("--namespace", help="deliver only these namespaces, comma-separated")
    dl.add_argument(
        "--filter",
        metavar="QUERY",
        help="the same filter as one query string, namespace=payments&action=user.* "
        "(as AUDIT_DELIVERY_FILTER is written)",
    )
    dl.set_defaults(func=cmd_deliver)

    v = sub.add_parser("verify", help="check checksums, the hash chain and the day counts")
    v.add_argument(
        "--recount", action="store_true", help="first rebuild the day counts from the records"
    )
    v.set_defaults(func=cmd_verify)
