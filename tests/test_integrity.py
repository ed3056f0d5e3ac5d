"""verify: every checksum and the chain; it names the first row that breaks."""

from __future__ import annotations

from sqlalchemy import Engine, delete, insert, select, update

from audit_core.integrity import verify
from audit_core.models import AuditRecord
from audit_core.record import CHECKED_FIELDS, compute_checksum

from .conftest import add_demo

T = AuditRecord.__table__


def ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(T.c.id).order_by(T.c.seq)).scalars())


def check(engine: Engine):  # noqa: ANN201
    with engine.connect() as conn:
        return verify(conn)


def test_an_untouched_log_verifies(engine: Engine) -> None:
    add_demo(engine, 50)
    assert check(engine).ok and check(engine).checked == 50


def test_an_edited_field_is_caught_at_that_row(engine: Engine) -> None:
    add_demo(engine, 50)
    victim = ids(engine)[20]
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == victim).values(user="mallory@evil.com"))
    result = check(engine)
    assert not result.ok and result.bad_id == victim and result.checked == 20
    assert "checksum" in (result.reason or "")


def test_an_edit_with_a_recomputed_checksum_breaks_the_chain(engine: Engine) -> None:
    add_demo(engine, 50)
    with engine.connect() as conn:
        row = conn.execute(select(T).order_by(T.c.seq).offset(10).limit(1)).one()._mapping
    fields = {k: row[k] for k in CHECKED_FIELDS}
    fields["user"] = "mallory@evil.com"
    with engine.begin() as conn:
        conn.execute(
            update(T)
            .where(T.c.seq == row["seq"])
            .values(user="mallory@evil.com", checksum=compute_checksum(fields))
        )
    result = check(engine)
    assert result.bad_id == row["id"] and "chain" in (result.reason or "")


def test_a_removed_row_is_caught_at_the_next(engine: Engine) -> None:
    add_demo(engine, 50)
    all_ids = ids(engine)
    with engine.begin() as conn:
        conn.execute(delete(T).where(T.c.id == all_ids[30]))
    assert check(engine).bad_id == all_ids[31]


def test_removing_the_newest_rows_is_caught(engine: Engine) -> None:
    add_demo(engine, 50)
    with engine.begin() as conn:
        conn.execute(delete(T).where(T.c.id == ids(engine)[-1]))
    result = check(engine)
    assert not result.ok and result.bad_id is None and "tip" in (result.reason or "")


def test_an_inserted_row_is_caught(engine: Engine) -> None:
    add_demo(engine, 20)
    with engine.connect() as conn:
        row = dict(conn.execute(select(T).order_by(T.c.seq).limit(1)).one()._mapping)
    row.update(seq=None, id="audit-20990101-001")
    row.pop("seq")
    row.pop("leaf")  # an attacker writing around the portal gives it no place in the tree
    with engine.begin() as conn:
        conn.execute(insert(T).values(**row))
    assert check(engine).bad_id == "audit-20990101-001"
