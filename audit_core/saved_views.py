"""Saved views: a person's named Explore filters, shared by link, never wider than the opener.

A view keeps its filter as asked (the API's parameters), not as scoped. Whoever opens
one gets it through `access.scope`, the function every read goes through, so a link an
admin shares shows a viewer what their own grants allow, or the same refusal as asking
for it by hand. Its id is random: a link cannot be guessed from another. Saving and
deleting are each written to the audit log in the transaction that makes the change.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, insert, select

from . import access, store
from .access import AccessDeniedError, Principal
from .config import Settings
from .errors import BadRequestError, NotFoundError
from .filters import AuditFilter
from .models import SAVED_VIEWS

MAX_NAME = 80  # characters; the column's width
MAX_PER_OWNER = 200
MAX_ID = 32
RESOURCE_TYPE = "SavedView"
# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned
# characters, and line/paragraph separators: each can make a name read as something else.
_REFUSED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
DELETE_RULE = "only its owner or an admin may delete a saved view"


class SavedViewError(BadRequestError):
    """A view that cannot be saved as asked (its name, a duplicate, too many views)."""


class SavedViewNotFoundError(NotFoundError):
    """No saved view has this id."""


@dataclass(frozen=True)
class SavedView:
    """One saved view: its link id, who saved it, its name and its filter (as asked)."""

    view_id: str
    owner: str
    name: str
    filter: AuditFilter
    created_at: datetime


def check_name(raw: str) -> str:
    """Return the name trimmed of spaces; refuse an empty, over-long or control-laden one."""
    name = (raw or "").strip(" ")
    if not name:
        raise SavedViewError("give the view a name")
    if len(name) > MAX_NAME:
        raise SavedViewError(f"a view's name is at most {MAX_NAME} characters")
    if any(unicodedata.category(ch) in _REFUSED for ch in name):
        raise SavedViewError("a view's name may not hold control or invisible characters")
    return name


def may_delete(who: Principal, view: SavedView) -> bool:
    """The permission rule: the view's owner, or an admin."""
    return who.is_admin or view.owner == who.email


def create(
    engine: Engine,
    who: Principal,
    name: str,
    flt: AuditFilter,
    *,
    settings: Settings | None = None,
) -> SavedView:
    """Save `flt` under `name` for `who`; audited as portal.view.save.

    A person saves only a filter they may read (checked by access.scope), and one
    name once.
    """
    name = check_name(name)
    access.scope(who, flt)
    view = SavedView(secrets.token_urlsafe(12), who.email, name, flt, datetime.now(UTC))
    with engine.begin() as conn:
        store.lock_head(conn)  # the log's write lock first: serialises the checks below
        _check_room(conn, who.email, name)
        conn.execute(
            insert(SAVED_VIEWS).values(
                view_id=view.view_id,
                owner=view.owner,
                name=view.name,
                filter_json=flt.to_json(),
                created_at=view.created_at,
            )
        )
        _record(conn, who, "portal.view.save", view, settings)
    return view


def _check_room(conn: Connection, owner: str, name: str) -> None:
    """Refuse a name the owner already uses, and an owner at the limit."""
    t = SAVED_VIEWS
    mine = select(func.count()).select_from(t).where(t.c.owner == owner)
    if conn.execute(mine.where(t.c.name == name)).scalar_one():
        raise SavedViewError(f"you already have a view named {name!r}")
    if conn.execute(mine).scalar_one() >= MAX_PER_OWNER:
        raise SavedViewError(f"you have {MAX_PER_OWNER} saved views: delete one first")


def list_for(conn: Connection, who: Principal, *, limit: int = MAX_PER_OWNER) -> list[SavedView]:
    """The views `who` manages: their own by name; an admin's own first, then everyone's."""
    t = SAVED_VIEWS
    stmt = select(t)
    if not who.is_admin:
        stmt = stmt.where(t.c.owner == who.email)
    others_last = case((t.c.owner == who.email, 0), else_=1)
    stmt = stmt.order_by(others_last, t.c.owner, t.c.name, t.c.id).limit(limit)
    return [_view(r) for r in conn.execute(stmt).all()]


def get(conn: Connection, who: Principal, view_id: str) -> SavedView:
    """The view with this id, its filter checked against `who`'s grants by access.scope.

    Anyone with the link may open a view; it never widens their grants: a view of a
    namespace they lack is refused (AccessDeniedError), one of every namespace shows
    theirs.
    """
    view = find(conn, view_id)
    access.scope(who, view.filter)
    return view


def find(conn: Connection, view_id: str) -> SavedView:
    """The view with this id as stored, unchecked (SavedViewNotFoundError when none)."""
    row = None
    if view_id and len(view_id) <= MAX_ID:
        row = conn.execute(select(SAVED_VIEWS).where(SAVED_VIEWS.c.view_id == view_id)).first()
    if row is None:
        raise SavedViewNotFoundError(f"no saved view {view_id!r}")
    return _view(row)


def delete(
    engine: Engine, who: Principal, view_id: str, *, settings: Settings | None = None
) -> SavedView:
    """Delete a view (its owner or an admin); audited as portal.view.delete."""
    with engine.begin() as conn:
        store.lock_head(conn)
        view = find(conn, view_id)
        if not may_delete(who, view):
            raise AccessDeniedError(DELETE_RULE)
        conn.execute(SAVED_VIEWS.delete().where(SAVED_VIEWS.c.view_id == view_id))
        _record(conn, who, "portal.view.delete", view, settings)
    return view


def _record(
    conn: Connection, who: Principal, action: str, view: SavedView, settings: Settings | None
) -> None:
    """Write the save or delete into the log: the view's id, owner, name and filter."""
    access.record(
        conn,
        (settings or Settings()).self_namespace,
        who,
        action=action,
        resource=f"{view.view_id}: {view.name!r} of {view.owner}: {view.filter.describe()}",
        resource_type=RESOURCE_TYPE,
    )


def _view(row: Any) -> SavedView:
    flt = AuditFilter.from_json(row.filter_json)
    return SavedView(row.view_id, row.owner, row.name, flt, row.created_at)
