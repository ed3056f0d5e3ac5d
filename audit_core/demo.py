"""A realistic demo log: ~30 actions in families, hundreds of users, busy and quiet hours."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from .record import Record, compute_checksum, format_instant, to_micros

ACTIONS: dict[str, tuple[str, ...]] = {
    "runbook": ("create", "update", "delete", "execute", "approve"),
    "incident": ("create", "acknowledge", "escalate", "resolve", "comment"),
    "user": ("login", "logout", "create", "disable", "role.change"),
    "secret": ("read", "create", "rotate", "delete"),
    "deployment": ("create", "rollback", "approve", "promote"),
    "policy": ("create", "update", "delete", "evaluate"),
    "alert": ("fire", "silence", "resolve"),
}
RESOURCE_TYPES = {
    "runbook": "Runbook",
    "incident": "Incident",
    "user": "User",
    "secret": "Secret",
    "deployment": "Deployment",
    "policy": "Policy",
    "alert": "Alert",
}
# How often each family happens, relative to the others.
FAMILY_WEIGHTS = {
    "runbook": 12,
    "incident": 10,
    "user": 30,
    "secret": 14,
    "deployment": 16,
    "policy": 6,
    "alert": 12,
}
NAMESPACES = (
    "production",
    "staging",
    "development",
    "payments",
    "identity",
    "data-platform",
    "observability",
    "networking",
    "security",
    "billing",
    "mobile",
    "ml-platform",
)
ROLES = (
    ("admin", 3),
    ("operator", 25),
    ("developer", 50),
    ("sre", 15),
    ("security", 5),
    ("auditor", 2),
)
FIRST = (
    "ana",
    "bruno",
    "carlos",
    "diana",
    "eduardo",
    "fernanda",
    "gabriel",
    "helena",
    "igor",
    "julia",
    "kaio",
    "larissa",
    "marcos",
    "natalia",
    "otavio",
    "paula",
    "rafael",
    "sofia",
    "tiago",
    "vitoria",
    "wagner",
    "yasmin",
    "zeca",
    "amelia",
    "bernardo",
)
LAST = (
    "silva",
    "santos",
    "oliveira",
    "souza",
    "lima",
    "pereira",
    "costa",
    "almeida",
    "rocha",
    "gomes",
    "martins",
    "araujo",
    "barbosa",
    "ribeiro",
    "carvalho",
)
# Activity by hour of day (UTC): quiet nights, a busy working day.
HOURLY = (1, 1, 1, 1, 1, 2, 4, 8, 12, 14, 14, 12, 9, 12, 14, 14, 12, 9, 6, 4, 3, 2, 2, 1)


def _users(rng: random.Random, n: int) -> list[tuple[str, str]]:
    roles, weights = zip(*ROLES, strict=True)
    seen: set[str] = set()
    out = [("admin@empresa.com", "admin"), ("carlos.silva@empresa.com", "operator")]
    seen.update(u for u, _ in out)
    while len(out) < n:
        suffix = rng.choice(["", "", str(rng.randint(1, 99))])
        email = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{suffix}@empresa.com"
        if email not in seen:
            seen.add(email)
            out.append((email, rng.choices(roles, weights)[0]))
    return out


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.15:
        a, b, c = rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF), rng.randint(1, 0xFFFF)
        return f"2001:db8:{a:x}:{b:x}::{c:x}"
    return f"10.0.{rng.randint(0, 9)}.{rng.randint(2, 254)}"


def generate(
    count: int, *, seed: int = 1, end: datetime | None = None, days: int = 90
) -> Iterator[Record]:
    """Yield `count` demo records over `days` days ending at `end`, in time order."""
    rng = random.Random(seed)
    end = (end or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    users = _users(rng, 300)
    user_weights = [1.0 / (i + 1) ** 0.7 for i in range(len(users))]
    families = list(FAMILY_WEIGHTS)
    fam_weights = [FAMILY_WEIGHTS[f] for f in families]
    ns_weights = [1.0 / (i + 1) for i in range(len(NAMESPACES))]
    # Spread the records over hours in proportion to HOURLY, weekdays busier than weekends.
    hours = []
    for h in range(days * 24):
        at = start + timedelta(hours=h)
        hours.append(HOURLY[at.hour] * (1.0 if at.weekday() < 5 else 0.35))
    total_w = sum(hours)
    cum = list(itertools.accumulate(hours))
    micros = sorted(
        (
            bisect.bisect_left(cum, rng.random() * total_w) * 3_600_000_000
            + rng.randrange(3_600_000_000)
        )
        // 1_000_000
        * 1_000_000
        for _ in range(count)
    )
    day_seq: dict[str, int] = {}
    base = start
    for us in micros:
        when = base + timedelta(microseconds=us)
        day = f"{when:%Y%m%d}"
        n = day_seq.get(day, 0) + 1
        day_seq[day] = n
        fam = rng.choices(families, fam_weights)[0]
        verb = rng.choice(ACTIONS[fam])
        user, role = rng.choices(users, user_weights)[0]
        ns = rng.choices(NAMESPACES, ns_weights)[0]
        fields = {
            "id": f"audit-{day}-{n:03d}",
            "timestamp": format_instant(when),
            "action": f"{fam}.{verb}",
            "user": user,
            "role": role,
            "resource": _resource(rng, fam, when),
            "resourceType": RESOURCE_TYPES[fam],
            "namespace": ns,
            "sourceIP": _ip(rng),
        }
        yield Record(**fields, checksum=compute_checksum(fields), ts=to_micros(when))


def _resource(rng: random.Random, fam: str, when: datetime) -> str:
    if fam == "incident":
        return f"INC-{when:%Y%m%d}-{rng.randint(1, 40):03d}"
    if fam == "runbook":
        return "runbook-" + rng.choice(
            (
                "disk-cleanup",
                "db-failover",
                "cert-renewal",
                "cache-flush",
                "node-drain",
                "log-rotate",
            )
        )
    if fam == "user":
        return f"user-{rng.randint(1000, 9999)}"
    if fam == "secret":
        return (
            rng.choice(("db-password", "api-key", "tls-cert", "oauth-client"))
            + f"-{rng.randint(1, 30)}"
        )
    if fam == "deployment":
        return (
            rng.choice(("checkout", "api-gateway", "auth", "search", "ledger"))
            + f"-v{rng.randint(1, 9)}.{rng.randint(0, 30)}"
        )
    if fam == "policy":
        return "policy-" + rng.choice(
            ("mfa-required", "ip-allowlist", "least-privilege", "retention")
        )
    return "alert-" + rng.choice(("cpu-high", "disk-full", "latency-p99", "error-rate"))
