"""Explore: filter the log, read its summary and charts, preview records, export them."""

from __future__ import annotations

from datetime import UTC, datetime

import altair as alt
import streamlit as st

from audit_core import formats, jobs, query, service, views
from audit_core.access import AccessDeniedError, Principal
from audit_core.filters import FORMATS, AuditFilter
from pages import common

FMT_LABELS = {"csv": "CSV", "json": "JSON", "jsonl": "JSON Lines"}
KEYS = {
    "from": "explore_from",
    "to": "explore_to",
    "action": "explore_action",
    "user": "explore_user",
    "namespace": "explore_namespace",
}
HALF_OPEN = (
    "Times are UTC, ISO 8601 (2026-03-01 or 2026-03-01T08:30:00Z). The range is "
    "half-open: From is included, To is not, so [From, To)."
)


def _restore() -> None:
    """Fill the filter widgets: from the URL on a session's first visit, else as last left.

    Streamlit forgets a widget's value while its page is not shown, so the filter is
    also kept under a key of its own and put back on returning from another page.
    """
    if KEYS["from"] in st.session_state:
        return
    saved = st.session_state.get("explore_saved")
    typed = (
        saved
        if isinstance(saved, views.FilterInput)
        else views.FilterInput.from_query(st.query_params.to_dict())
    )
    st.session_state[KEYS["from"]] = typed.start
    st.session_state[KEYS["to"]] = typed.end
    st.session_state[KEYS["action"]] = list(typed.actions)
    st.session_state[KEYS["user"]] = list(typed.users)
    st.session_state[KEYS["namespace"]] = list(typed.namespaces)


def _filter_form(who: Principal) -> tuple[AuditFilter | None, views.FilterInput]:
    """Draw the filter form; return the valid filter (or None) and the values as typed."""
    kept = {k: st.session_state.get(KEYS[k], []) for k in views.LIST_PARAMS}
    known = common.pickers(who)
    with st.form("explore_filters", border=True):
        c_from, c_to = st.columns(2)
        with c_from:
            st.text_input(
                "From (UTC, included)",
                key=KEYS["from"],
                placeholder="earliest record",
                help=HALF_OPEN,
            )
            err_from = st.empty()
        with c_to:
            st.text_input(
                "To (UTC, not included)", key=KEYS["to"], placeholder="now", help=HALF_OPEN
            )
            err_to = st.empty()
        c_action, c_user, c_ns = st.columns(3)
        with c_action:
            st.multiselect(
                "Action",
                views.action_options(known["action"], kept["action"]),
                key=KEYS["action"],
                format_func=views.action_label,
                placeholder="every action",
                help="Pick actions, or a whole family with family.* (e.g. runbook.*).",
            )
            err_action = st.empty()
        with c_user:
            st.multiselect(
                "User",
                views.with_kept(known["user"], kept["user"]),
                key=KEYS["user"],
                placeholder="every user",
                accept_new_options=True,
                help="Type to search; matched without regard to case.",
            )
            err_user = st.empty()
        with c_ns:
            st.multiselect(
                "Namespace",
                views.with_kept(known["namespace"], kept["namespace"]),
                key=KEYS["namespace"],
                placeholder="every namespace you may see",
                help="Only the namespaces granted to you are offered.",
            )
            err_ns = st.empty()
        st.form_submit_button("Apply filters", type="primary")
    typed = views.FilterInput(
        start=st.session_state.get(KEYS["from"]) or "",
        end=st.session_state.get(KEYS["to"]) or "",
        actions=tuple(st.session_state.get(KEYS["action"]) or ()),
        users=tuple(st.session_state.get(KEYS["user"]) or ()),
        namespaces=tuple(st.session_state.get(KEYS["namespace"]) or ()),
    )
    st.session_state["explore_saved"] = typed
    flt, errors = typed.parse()
    slots = {
        "from": err_from,
        "to": err_to,
        "action": err_action,
        "user": err_user,
        "namespace": err_ns,
    }
    for field, message in errors.items():
        slots.get(field, err_from).error(views.md(message))  # it quotes what was typed
    return flt, typed


def _sync_url(typed: views.FilterInput) -> None:
    """Keep the URL's query parameters equal to the filter, so a copied link reopens it."""
    wanted = typed.to_query()
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def _summary(s: query.Summary, flt: AuditFilter) -> None:
    st.caption(views.md(flt.describe()))
    cols = st.columns(3)
    cols[0].metric("Matching records", f"{s.total:,}")
    cols[1].metric("Users", f"{s.users:,}")
    cols[2].metric("Actions", f"{s.actions:,}")
    if s.total:
        st.markdown(f"First record {views.code(s.first)} · last record {views.code(s.last)} (UTC)")


def _charts(who: Principal, flt: AuditFilter, data: views.ExploreData) -> None:
    by = (
        st.segmented_control(
            "Stack activity by", ["family", "namespace"], default="family", key="explore_stack_by"
        )
        or "family"
    )
    bucket = data.bucket
    counts = data.histogram if by == "family" else common.histogram(who, flt, bucket, by)
    frame = views.histogram_frame(counts, by)
    activity = (
        alt.Chart(frame, title=f"Records per {bucket} (UTC)")
        .mark_bar()
        .encode(
            x=alt.X(
                f"utc{'yearmonthdatehours' if bucket == 'hour' else 'yearmonthdate'}(time):T",
                title=None,
            ),
            y=alt.Y("sum(records):Q", title="records"),
            color=alt.Color(f"{by}:N", title=by),
            tooltip=[
                alt.Tooltip("utcyearmonthdatehours(time):T", title="from (UTC)"),
                by,
                alt.Tooltip("sum(records):Q", title="records"),
            ],
        )
        .properties(height=260)
    )
    st.altair_chart(activity, width="stretch")
    top = data.facets
    left, right = st.columns(2)
    for col, name, title in ((left, "action", "Top actions"), (right, "user", "Top users")):
        chart = (
            alt.Chart(views.facet_frame(top.get(name, []), name), title=title)
            .mark_bar()
            .encode(
                x=alt.X("records:Q"),
                y=alt.Y(
                    f"{name}:N",
                    sort="-x",
                    title=None,
                    axis=alt.Axis(labelOverlap=False, labelLimit=220),
                ),
                tooltip=[name, "records"],
            )
            .properties(height=260)
        )
        col.altair_chart(chart, width="stretch")


def _preview(who: Principal, flt: AuditFilter, data: views.ExploreData) -> None:
    """Newest 500 first; 'Older' walks back by keyset token; a selected row opens in full."""
    marker = flt.to_json()
    if st.session_state.get("explore_pages_for") != marker:
        st.session_state["explore_pages_for"] = marker
        st.session_state["explore_pages"] = [None]
    tokens: list[str | None] = st.session_state["explore_pages"]
    page = data.first_page if tokens[-1] is None else common.preview(who, flt, tokens[-1])
    total = data.summary.total
    start = (len(tokens) - 1) * views.PREVIEW_ROWS
    st.subheader("Records")
    st.caption(
        f"Newest first: records {start + 1:,}-{start + len(page.rows):,} of {total:,}. "
        "Click a column to sort this page; select a row to see the full record."
    )
    event = st.dataframe(
        views.preview_frame(page.rows),
        key="explore_table",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=420,
    )
    nav_newer, nav_older, _ = st.columns([1, 1, 6])
    if nav_newer.button("Newest", disabled=len(tokens) == 1, key="explore_newest"):
        st.session_state["explore_pages"] = [None]
        st.rerun()
    if nav_older.button("Older", disabled=page.next_token is None, key="explore_older"):
        tokens.append(page.next_token)
        st.rerun()
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    if rows and rows[0] < len(page.rows):
        fields, ok = views.record_detail(page.rows[rows[0]])
        with st.container(border=True):
            st.markdown(f"**Record** {views.code(fields[0][1])}")
            st.table(views.record_table(fields))
            if ok:
                st.success("Checksum matches the record's fields.", icon=":material/verified:")
            else:
                st.error("Checksum does NOT match the record's fields.")
            if st.button("Prove this record", key="explore_prove", icon=":material/verified:"):
                st.switch_page("pages/verify.py", query_params={"record": fields[0][1]})


def _export(who: Principal, flt: AuditFilter, total: int) -> None:
    ctx = common.ctx()
    limit = ctx.settings.sync_export_limit
    st.subheader("Export")
    if service.fits_immediate(total, ctx.settings):
        st.caption(f"{total:,} records: download them now. Files are built when you click.")
        today = datetime.now(UTC)
        cols = st.columns(3)
        for col, fmt in zip(cols, FORMATS, strict=True):
            name = formats.filename(fmt, today)
            col.download_button(
                f"Download {FMT_LABELS[fmt]}",
                data=lambda fmt=fmt, name=name: views.export_bytes(
                    ctx.engine, who, flt, fmt, ctx.settings, name
                ),
                file_name=name,
                mime=formats.CONTENT_TYPES[fmt],
                key=f"explore_download_{fmt}",
                on_click="ignore",
                width="stretch",
            )
        st.caption("Each download is signed: its manifest and signature are on the Exports page.")
        return
    st.info(
        f"{total:,} records match. Downloads over {limit:,} records are built in the "
        "background as a file you fetch from the Exports page (the export API's rule)."
    )
    c_fmt, c_go = st.columns([2, 1])
    fmt = c_fmt.selectbox(
        "Format", list(FMT_LABELS), format_func=FMT_LABELS.get, key="explore_queue_format"
    )
    c_go.write("")
    if c_go.button("Queue export", type="primary", key="explore_queue"):
        try:
            with ctx.engine.connect() as conn:
                plan = service.plan_export(conn, who, flt, fmt or "csv")
            job = jobs.enqueue(ctx.engine, plan, who, ctx.settings)
        except jobs.TooManyJobsError as exc:
            st.warning(views.md(str(exc)))
        except AccessDeniedError as exc:
            common.refused(who, str(exc), "queue export")
        else:
            st.success(
                f"Queued {views.code(job.job_id)}: {plan.total:,} records as "
                f"{FMT_LABELS[plan.fmt]}."
            )
    st.page_link("pages/exports.py", label="Follow your exports", icon=":material/download:")


who = common.frame()
st.title("Explore")
_restore()
flt, typed = _filter_form(who)
_sync_url(typed)
if flt is None:
    st.stop()
try:
    data = common.explore(who, flt)
except AccessDeniedError as exc:
    common.refused(who, str(exc), "explore")
    st.stop()
s = data.summary
_summary(s, flt)
if s.total == 0:
    if typed.to_query():
        st.info(
            "No records match this filter. Widen the time range or remove a term.",
            icon=":material/filter_alt_off:",
        )
    else:
        st.info(
            "The audit log is empty (or holds nothing in your namespaces). An admin can load "
            "a file on the Ingest page, or run `python -m audit_core demo --records 10000`.",
            icon=":material/inbox:",
        )
    st.stop()
_charts(who, flt, data)
_preview(who, flt, data)
if who.can_export:
    _export(who, flt, s.total)
