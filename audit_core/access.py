"""Principals, roles and namespace grants; the one place a filter is scoped to a person.

(Users, API tokens and signed download links are added by the access issue.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .filters import AuditFilter

ROLES = ("admin", "auditor", "viewer")


class AccessDenied(PermissionError):
    """The principal may not do this; the message says why, without leaking data."""


@dataclass(frozen=True)
class Principal:
    """Who is acting: email (or cli:<user>), role, and granted namespaces (None = all)."""

    email: str
    role: str
    namespaces: frozenset[str] | None = None
    source_ip: str = ""

    @property
    def can_export(self) -> bool:
        return self.role in ("admin", "auditor")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def scope(principal: Principal, flt: AuditFilter) -> AuditFilter:
    """Intersect a filter's namespaces with the principal's grants.

    Asking for a namespace outside the grants is refused rather than silently emptied.
    """
    if principal.namespaces is None:
        return flt
    if flt.namespaces:
        outside = [n for n in flt.namespaces if n not in principal.namespaces]
        if outside:
            raise AccessDenied(f"you have no access to namespace {', '.join(outside)}")
        return flt
    if not principal.namespaces:
        raise AccessDenied("you have no namespace grants")
    return flt.with_namespaces(sorted(principal.namespaces))


LOCAL_ADMIN = Principal(email="local-admin", role="admin", namespaces=None, source_ip="127.0.0.1")
