"""Explore: filter the log, read its summary and charts, preview records, export them."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import altair as alt
import streamlit as st

from audit_core import formats, jobs, query, saved_views, service, views
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
RECORD = "explore_record"  # the id of the record the panel shows
PINNED = "explore_pinned"  # "link" or "anyway": shown even when not on the page
URL_RECORD = "explore_url_record"  # the record the URL names (as last read or written)
TABLE = "explore_table"  # the preview grid's key: its selection
TABLE_FOR = "explore_table_for"  # (page, record) the grid's selection was last set for
PRESET = "explore_preset"  # the time range picker: a preset, or "custom"
PICK = {"from": "explore_from_pick", "to": "explore_to_pick"}  # the date-and-time pickers
SHOWN = "explore_pick_shown"  # what each picker was given to show (untouched if still so)
RESOLVED = "explore_preset_resolved"  # (preset, from, to): the instants a preset became
URL_VIEW = "explore_url_view"  # the saved view the URL names (as last followed)
OPENED = "explore_view_opened"  # (view id, name, owner, filter as applied)
VIEW_NAME = "explore_view_name"
VIEW_PICK = "explore_view_pick"
VIEW_PICK_NEXT = "explore_view_pick_next"  # the view to pick once the list is drawn again
VIEW_NAME_CLEAR = "explore_view_name_clear"  # empty the name field on the next run
VIEW_FLASH = "explore_view_flash"  # ("ok" | "note", Markdown): what the last save/delete did
INTRO = (
    "Filter your organisation's audit log, read any record whole and export what matches "
    "as signed files anyone can check: start with the filter below."
)
HALF_OPEN = (
    "Times are UTC, ISO 8601 (2026-03-01 or 2026-03-01T08:30:00Z). The range is "
    "half-open: From is included, To is not, so [From, To)."
)
HALF_OPEN_SHORT = "UTC. Half-open, [From, To): From is included, To is not."
PICK_HELP = (
    "Pick a date and time (UTC); on Apply it replaces the text beside it. Left as it "
    "is, the text stands, to the second."
)
PRESET_HELP = (
    "On Apply, a preset becomes fixed From and To instants (UTC) in the fields and "
    "the link, so a copied link means the same range tomorrow."
)


def _restore() -> None:
    """Fill the filter widgets: from the URL on a session's first visit, else as last left.

    Streamlit forgets a widget's value while its page is not shown, so the filter is
    also kept under a key of its own and put back on returning from another page. On the
    first visit, the URL's parameters that Explore does not read are kept to be named.
    """
    if KEYS["from"] in st.session_state:
        return
    saved = st.session_state.get("explore_saved")
    params = st.query_params.to_dict()
    typed = saved if isinstance(saved, views.FilterInput) else views.FilterInput.from_query(params)
    if not isinstance(saved, views.FilterInput):
        params.pop(views.VIEW_PARAM, None)  # a saved view's link: read by _follow_view
        st.session_state["explore_url_unknown"] = (views.unknown_params(params), typed)
    _set_filter(typed)


def _set_filter(typed: views.FilterInput) -> None:
    """Put a filter into the widgets (before they are drawn), the pickers to match."""
    st.session_state[KEYS["from"]] = typed.start
    st.session_state[KEYS["to"]] = typed.end
    st.session_state[KEYS["action"]] = list(typed.actions)
    st.session_state[KEYS["user"]] = list(typed.users)
    st.session_state[KEYS["namespace"]] = list(typed.namespaces)
    _show_times()


def _show_times() -> None:
    """Set each picker to its text's instant and the time range back to custom."""
    shown = {side: views.picker_value(st.session_state.get(KEYS[side]) or "") for side in PICK}
    for side, value in shown.items():
        st.session_state[PICK[side]] = value
    st.session_state[SHOWN] = shown
    st.session_state[PRESET] = "custom"


def _apply_times() -> None:
    """On Apply, before the page runs: a preset becomes absolute instants in From and To;
    else a picker the person moved replaces its text."""
    preset = st.session_state.get(PRESET) or "custom"
    if preset != "custom":
        start, end = views.preset_text(preset, datetime.now(UTC))
        st.session_state[KEYS["from"]], st.session_state[KEYS["to"]] = start, end
        st.session_state[RESOLVED] = (preset, start, end)
    else:
        shown = st.session_state.get(SHOWN) or {}
        for side in PICK:
            text = st.session_state.get(KEYS[side]) or ""
            picked = st.session_state.get(PICK[side])
            st.session_state[KEYS[side]] = views.reconcile_time(text, picked, shown.get(side))
    _show_times()


def _follow_view(who: Principal) -> None:
    """Apply the saved view a `?view=<id>` link names, once per link, scoped to `who`.

    The view's filter goes through access.scope (saved_views.get) as every read does:
    a view of a namespace `who` lacks is refused, and the filter is left as it was.
    """
    wanted = st.query_params.get(views.VIEW_PARAM)
    if not wanted:
        st.session_state[URL_VIEW] = None
        return
    if wanted == st.session_state.get(URL_VIEW):
        return
    st.session_state[URL_VIEW] = wanted
    try:
        with common.ctx().engine.connect() as conn:
            view = saved_views.get(conn, who, wanted)
    except saved_views.SavedViewNotFoundError:
        which = views.code(wanted) if len(wanted) <= saved_views.MAX_ID else "with this id"
        st.error(f"No saved view {which}: it was deleted, or the link is cut short.")
        return
    except AccessDeniedError as exc:
        common.refused(who, f"saved view {wanted}: {exc}", "open saved view")
        return
    typed = views.FilterInput.from_query(view.filter.to_params())
    _set_filter(typed)
    st.session_state[OPENED] = (view.view_id, view.name, view.owner, typed)
    st.session_state[VIEW_PICK] = view.view_id


def _follow_link() -> None:
    """Open the record a `?record=<id>` link names, once per link (the URL is ours after)."""
    wanted = st.query_params.get(views.RECORD_PARAM)
    if wanted and wanted != st.session_state.get(URL_RECORD):
        _open(wanted, pinned="link")
        st.session_state[URL_RECORD] = wanted


def _open(record_id: str | None, *, pinned: str | None = None) -> None:
    """Make `record_id` the record the panel shows; pinned ("link", "anyway"): shown even
    when the rows do not hold it."""
    st.session_state[RECORD] = record_id
    st.session_state[PINNED] = pinned if record_id is not None else None


def _filter_form(who: Principal) -> tuple[AuditFilter | None, views.FilterInput]:
    """Draw the filter form; return the valid filter (or None) and the values as typed."""
    with st.form("explore_filters", border=True):
        slots = _time_row()
        slots.update(_terms_row(who))
        st.form_submit_button("Apply filters", type="primary", on_click=_apply_times)
    typed = _typed()
    st.session_state["explore_saved"] = typed
    flt, errors = typed.parse()
    for field, message in errors.items():
        slots.get(field, slots["from"]).error(views.md(message))  # it quotes what was typed
    return flt, typed


def _time_row() -> dict[str, Any]:
    """The time range: a preset, From and To as text, a date-and-time picker under each."""
    c_range, c_rule = st.columns(2, vertical_alignment="bottom")
    with c_range:
        st.selectbox(
            "Time range",
            list(views.TIME_PRESETS),
            key=PRESET,
            format_func=views.TIME_PRESETS.__getitem__,
            help=PRESET_HELP,
        )
    with c_rule:
        st.caption(HALF_OPEN_SHORT)
        _resolved_note()
    c_from, c_to = st.columns(2)
    slots: dict[str, Any] = {}
    for col, side, label, empty in (
        (c_from, "from", "From (UTC, included)", "earliest record"),
        (c_to, "to", "To (UTC, not included)", "now"),
    ):
        with col:
            st.text_input(label, key=KEYS[side], placeholder=empty, help=HALF_OPEN)
            st.datetime_input(
                f"Pick {side.title()} (UTC)",
                value=None,
                min_value=views.PICKER_MIN,
                max_value=views.PICKER_MAX,
                key=PICK[side],
                format="YYYY-MM-DD",
                help=PICK_HELP,
            )
            slots[side] = st.empty()
    return slots


def _resolved_note() -> None:
    """Say which instants the last preset became, while From and To still hold them."""
    resolved = st.session_state.get(RESOLVED)
    if not resolved:
        return
    preset, start, end = resolved
    if (st.session_state.get(KEYS["from"]), st.session_state.get(KEYS["to"])) == (start, end):
        st.caption(views.md(f"{views.TIME_PRESETS[preset]}, fixed when applied: {start} to {end}."))


def _terms_row(who: Principal) -> dict[str, Any]:
    """The action, user and namespace pickers; the error slot under each."""
    kept = {k: st.session_state.get(KEYS[k], []) for k in views.LIST_PARAMS}
    known = common.pickers(who)
    missing = views.unmatched_terms(_typed(), known, who)
    # One above the other, each as wide as the form: a chip is cut only past that width
    # (Streamlit's chips are at most their field's width; three fields side by side at a
    # 1024 px window cut "runbook.*" to "runboo…").
    c_action = c_user = c_ns = st.container()
    with c_action:
        st.multiselect(
            "Action",
            views.action_options(known["action"], kept["action"]),
            key=KEYS["action"],
            format_func=lambda o: views.picker_label(
                o, missing.get("action", ()), views.action_label
            ),
            placeholder="every action",
            help="Pick actions, or a whole family with family.* (e.g. runbook.*).",
        )
        err_action = st.empty()
    with c_user:
        st.multiselect(
            "User",
            views.with_kept(known["user"], kept["user"]),
            key=KEYS["user"],
            format_func=lambda o: views.picker_label(o, missing.get("user", ())),
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
            format_func=lambda o: views.picker_label(o, missing.get("namespace", ())),
            placeholder="every namespace you may see",
            help="Only the namespaces granted to you are offered.",
        )
        err_ns = st.empty()
    return {"action": err_action, "user": err_user, "namespace": err_ns}


def _typed() -> views.FilterInput:
    """The filter widgets' values as they stand."""
    return views.FilterInput(
        start=st.session_state.get(KEYS["from"]) or "",
        end=st.session_state.get(KEYS["to"]) or "",
        actions=tuple(st.session_state.get(KEYS["action"]) or ()),
        users=tuple(st.session_state.get(KEYS["user"]) or ()),
        namespaces=tuple(st.session_state.get(KEYS["namespace"]) or ()),
    )


def _warn(who: Principal, typed: views.FilterInput) -> None:
    """Name what the URL or the filter asks for that means nothing: never ignore it silently."""
    unknown = st.session_state.get("explore_url_unknown")
    if unknown and unknown[0] and unknown[1] == typed:  # until the filter is changed
        st.warning(views.unknown_params_message(unknown[0]), icon=":material/link_off:")
    for field, values in views.unmatched_terms(typed, common.pickers(who), who).items():
        st.warning(views.unmatched_message(field, values), icon=":material/search_off:")


def _opened_note(typed: views.FilterInput) -> None:
    """Name the saved view whose filter is applied, for as long as it is."""
    opened = st.session_state.get(OPENED)
    if opened and opened[3] == typed:
        _, name, owner, _ = opened
        st.info(
            f"Saved view {views.md(name)} by {views.md(owner)}: its filter is applied.",
            icon=":material/bookmark:",
        )


def _views_panel(who: Principal, flt: AuditFilter | None) -> None:
    """Save the filter as a named view; share or delete the views `who` may manage."""
    flash = st.session_state.pop(VIEW_FLASH, None)
    with st.expander(
        "Saved views: save, share, delete", icon=":material/bookmarks:", expanded=bool(flash)
    ):
        if flash:
            (st.success if flash[0] == "ok" else st.info)(flash[1])
        _save_row(who, flt)
        listed = _manageable(who)
        if listed:
            _manage(who, listed)
        else:
            st.caption("No saved views yet.")


def _save_row(who: Principal, flt: AuditFilter | None) -> None:
    """A name for the filter as applied, and the button that saves it."""
    if st.session_state.pop(VIEW_NAME_CLEAR, False):
        st.session_state[VIEW_NAME] = ""
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.text_input(
            "Name this filter",
            key=VIEW_NAME,
            max_chars=saved_views.MAX_NAME,
            placeholder="e.g. Runbook changes in March",
        )
        save = st.button(
            "Save view",
            key="explore_view_save",
            icon=":material/bookmark_add:",
            disabled=flt is None,
            help="Fix the filter first." if flt is None else None,
        )
    if save and flt is not None:
        _save(who, flt, st.session_state.get(VIEW_NAME) or "")


def _save(who: Principal, flt: AuditFilter, name: str) -> None:
    """Save the view (audited by the library); say so, or say why not."""
    ctx = common.ctx()
    try:
        view = saved_views.create(ctx.engine, who, name, flt, settings=ctx.settings)
    except saved_views.SavedViewError as exc:
        st.error(views.md(str(exc)))
        return
    except AccessDeniedError as exc:
        common.refused(who, str(exc), "save view")
        return
    st.session_state[VIEW_FLASH] = (
        "ok",
        f"Saved view {views.md(view.name)}: it is in the sidebar, and its link is below.",
    )
    st.session_state[VIEW_NAME_CLEAR] = True
    st.session_state[VIEW_PICK_NEXT] = view.view_id
    st.rerun()  # the sidebar, drawn before the click was read, lists it then


def _manageable(who: Principal) -> list[saved_views.SavedView]:
    """The views `who` manages (an admin: everyone's), and one shared with them they opened."""
    opened = st.session_state.get(OPENED)
    with common.ctx().engine.connect() as conn:
        listed = saved_views.list_for(conn, who)
        if opened and opened[0] not in {v.view_id for v in listed}:
            # Deleted, or no longer theirs to open: not offered.
            with suppress(saved_views.SavedViewNotFoundError, AccessDeniedError):
                listed.append(saved_views.get(conn, who, opened[0]))
    return listed


def _manage(who: Principal, listed: list[saved_views.SavedView]) -> None:
    """One view picked: what it selects, its link to share, and Delete (owner or admin)."""
    by_id = {v.view_id: v for v in listed}
    wanted = st.session_state.pop(VIEW_PICK_NEXT, None)
    if wanted in by_id:
        st.session_state[VIEW_PICK] = wanted
    elif st.session_state.get(VIEW_PICK) not in by_id:
        st.session_state[VIEW_PICK] = listed[0].view_id
    picked = st.selectbox(
        "Saved view",
        list(by_id),
        key=VIEW_PICK,
        format_func=lambda i: views.view_label(by_id[i].name, by_id[i].owner, who),
    )
    view = by_id[picked]
    st.caption(views.md(view.filter.describe()))
    st.caption("Its link. Whoever opens it sees what it matches within their own grants:")
    st.code(views.view_link(_base_url(), view.view_id), language=None, wrap_lines=True)
    allowed = saved_views.may_delete(who, view)
    with st.container(horizontal=True):
        st.page_link(
            "pages/explore.py",
            label="Open it",
            icon=":material/open_in_new:",
            query_params={views.VIEW_PARAM: view.view_id},
        )
        delete = st.button(
            "Delete view",
            key=f"explore_view_delete_{view.view_id}",
            icon=":material/delete:",
            disabled=not allowed,
            help=None if allowed else "Only its owner or an admin may delete it.",
        )
    if delete:
        _delete(who, view)


def _delete(who: Principal, view: saved_views.SavedView) -> None:
    """Delete the view (the library checks who may, and audits it); say what happened."""
    ctx = common.ctx()
    try:
        saved_views.delete(ctx.engine, who, view.view_id, settings=ctx.settings)
    except AccessDeniedError as exc:
        common.refused(who, f"saved view {view.view_id}: {exc}", "delete saved view")
        return
    except saved_views.SavedViewNotFoundError:
        st.session_state[VIEW_FLASH] = ("note", "That view had already been deleted.")
    else:
        st.session_state[VIEW_FLASH] = ("ok", f"Deleted view {views.md(view.name)}.")
    opened = st.session_state.get(OPENED)
    if opened and opened[0] == view.view_id:
        st.session_state[OPENED] = None
    st.rerun()


def _sync_url(typed: views.FilterInput) -> None:
    """Keep the URL equal to the filter and the open record, so a copied link reopens both."""
    wanted = typed.to_query()
    record = st.session_state.get(RECORD)
    if record:
        wanted[views.RECORD_PARAM] = record
    st.session_state[URL_RECORD] = record
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
    """Activity over time and the top actions and users, each chart told in words too."""
    st.header("Activity")
    by = (
        st.segmented_control(
            "Stack activity by", ["family", "namespace"], default="family", key="explore_stack_by"
        )
        or "family"
    )
    bucket = data.bucket
    counts = data.histogram if by == "family" else common.histogram(who, flt, bucket, by)
    st.altair_chart(_activity_chart(views.histogram_frame(counts, by), bucket, by), width="stretch")
    st.caption(views.activity_summary(counts, bucket))
    left, right = st.columns(2)
    for col, name, title in ((left, "action", "Top actions"), (right, "user", "Top users")):
        pairs = data.facets.get(name, [])
        col.altair_chart(_top_chart(pairs, name, title), width="stretch")
        col.caption(views.top_summary(pairs, name))


def _activity_chart(frame: Any, bucket: str, by: str) -> alt.Chart:
    """Records per hour or day (UTC), stacked by family or namespace."""
    return (
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


def _top_chart(pairs: list[tuple[str, int]], name: str, title: str) -> alt.Chart:
    """The busiest values of one field as horizontal bars."""
    return (
        alt.Chart(views.facet_frame(pairs, name), title=title)
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


def _preview(who: Principal, flt: AuditFilter, data: views.ExploreData) -> list[dict[str, str]]:
    """Newest 500 first; 'Older' walks back by keyset token; selecting a row opens its record.

    Returns the rows shown, so the record panel can look for its record among them.
    """
    marker = flt.to_json()
    if st.session_state.get("explore_pages_for") != marker:
        st.session_state["explore_pages_for"] = marker
        st.session_state["explore_pages"] = [None]
    tokens: list[str | None] = st.session_state["explore_pages"]
    page = data.first_page if tokens[-1] is None else common.preview(who, flt, tokens[-1])
    total = data.summary.total
    start = (len(tokens) - 1) * views.PREVIEW_ROWS
    st.header("Records")
    st.caption(
        f"Newest first: records {start + 1:,}-{start + len(page.rows):,} of {total:,}. "
        "Click a column to sort this page; select a row to see the full record."
    )
    shown = (marker, tokens[-1])
    _select_record_row(page.rows, shown)
    event = st.dataframe(
        views.preview_frame(page.rows),
        column_order=views.preview_order(),
        key=TABLE,
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=420,
    )
    _take_selection(event, page.rows, shown)
    with st.container(horizontal=True):  # sized to their labels: never cut at any width
        newest = st.button("Newest", disabled=len(tokens) == 1, key="explore_newest")
        older = st.button("Older", disabled=page.next_token is None, key="explore_older")
    if newest:
        st.session_state["explore_pages"] = [None]
        st.rerun()
    if older:
        tokens.append(page.next_token)
        st.rerun()
    return page.rows


def _select_record_row(rows: list[dict[str, str]], shown: tuple[str, str | None]) -> None:
    """Tick the open record's row, wherever the new rows put it (or none: it is not there).

    The grid keeps a selection as a row number, and a new filter or page puts another
    record at that number: so whenever the rows or the record change, the selection is
    set again from the record's id.
    """
    record = st.session_state.get(RECORD)
    if st.session_state.get(TABLE_FOR) == (shown, record):
        return
    st.session_state[TABLE_FOR] = (shown, record)
    at = views.row_of(rows, record)
    picked = [] if at is None else [at]
    st.session_state[TABLE] = {"selection": {"rows": picked, "columns": [], "cells": []}}


def _take_selection(event: Any, rows: list[dict[str, str]], shown: tuple[str, str | None]) -> None:
    """A row the person selected opens its record; clearing the record's own row closes it."""
    chosen = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    record = st.session_state.get(RECORD)
    if chosen and chosen[0] < len(rows):
        picked = rows[chosen[0]]["id"]
        if picked != record:
            _open(picked)
    elif views.row_of(rows, record) is not None:
        _open(None)
    st.session_state[TABLE_FOR] = (shown, st.session_state.get(RECORD))


def _record_section(who: Principal, rows: list[dict[str, str]], top: Any) -> None:
    """The open record: from the rows shown, else by its id when opened by its link.

    A record on the page opens below it; one opened by its link that the page does not
    hold opens in `top`, where whoever followed the link looks first (one opened anyway
    stays where its button was). A record selected earlier that the rows no longer hold
    is not swapped for another: the page says it left and offers to open it anyway.
    """
    record = st.session_state.get(RECORD)
    if not record:
        return
    at = views.row_of(rows, record)
    if at is not None:
        _record_panel(who, rows[at])
    elif st.session_state.get(PINNED) == "link":
        with top:
            _linked_record(who, record)
    elif st.session_state.get(PINNED):
        _linked_record(who, record)
    else:
        _record_left(record)


def _linked_record(who: Principal, record: str) -> None:
    """A record opened by its link: its panel, or the one answer for unknown and unseen ids."""
    found = common.record(who, record)
    if found is None:
        st.error(views.no_record_message(record), icon=":material/search_off:")
        _close_button("explore_close_missing")
    else:
        _record_panel(who, found, "Opened by its link: it is not among the rows this filter shows.")


def _record_left(record: str) -> None:
    """Say plainly that the selected record is not among the rows now shown; offer it anyway."""
    st.warning(
        f"The record you selected, {views.code(record)}, is not among the records shown now "
        "(the filter changed, or it is on another page). The panel shows no other record "
        "in its place.",
        icon=":material/move_item:",
    )
    st.caption("Its own link opens it whatever the filter:")
    st.code(views.record_link(_base_url(), record), language=None, wrap_lines=True)
    with st.container(horizontal=True):
        if st.button("Open it anyway", key="explore_open_anyway", icon=":material/open_in_new:"):
            _open(record, pinned="anyway")
            st.rerun()
        _close_button("explore_close_left")


def _record_panel(who: Principal, row: dict[str, str], note: str = "") -> None:
    """Every field whole and literal, each copyable, and the record as the export writes it."""
    fields, ok = views.record_detail(row)
    rid = fields[0][1]
    with st.container(border=True, key="explore_record_panel"):
        st.markdown(f"**Record** {views.code(rid)}")
        if note:
            st.caption(note)
        _record_tabs(row, fields)
        st.caption("Its link, which opens this record:")
        st.code(views.record_link(_base_url(), rid), language=None, wrap_lines=True)
        if ok:
            st.success("Checksum matches the record's fields.", icon=":material/verified:")
        else:
            st.error("Checksum does NOT match the record's fields.")
        with st.container(horizontal=True):
            if st.button("Prove this record", key="explore_prove", icon=":material/verified:"):
                st.switch_page("pages/verify.py", query_params={"record": rid})
            _close_button("explore_close_record")


def _record_tabs(row: dict[str, str], fields: list[tuple[str, str]]) -> None:
    """The fields as a table, each value in a block of its own to copy, and the JSON line."""
    tab_fields, tab_copy, tab_json = st.tabs(["Fields", "Copy a value", "JSON"])
    with tab_fields:
        st.table(views.record_table(fields))
    with tab_copy:
        for name, value in fields:
            st.caption(name)  # a field name of ours, never the log's
            st.code(value, language=None, wrap_lines=True)
    with tab_json:
        st.caption("Byte for byte the record's line in a JSON Lines export (its newline aside).")
        st.code(views.record_json(row).decode().rstrip("\n"), language="json", wrap_lines=True)


def _close_button(key: str) -> None:
    """Close the record panel (or the message standing in for it)."""
    if st.button("Close record", key=key, icon=":material/close:"):
        _open(None)
        st.rerun()


def _base_url() -> str | None:
    """This page's address as the browser has it (None outside a browser session)."""
    try:
        url = st.context.url
    except Exception:  # noqa: BLE001 - no browser context (AppTest)
        return None
    return url if isinstance(url, str) else None


def _empty(who: Principal) -> None:
    """An empty log (for this person): what to do next, and who can do it."""
    where = (
        "upload a JSON, JSON Lines or CSV file on the Ingest page, or on the server run "
        "`python -m audit_core ingest FILE`"
    )
    if who.namespaces is None:
        head = "The audit log is empty: no record has been loaded yet."
    else:
        head = "None of your namespaces holds a record yet."
    if who.is_admin:
        st.info(f"{head} To load records, {where}.", icon=":material/inbox:")
        st.page_link("pages/ingest.py", label="Go to Ingest", icon=":material/upload_file:")
    else:
        st.info(f"{head} A portal admin loads records: they {where}.", icon=":material/inbox:")


def _export(who: Principal, flt: AuditFilter, total: int) -> None:
    ctx = common.ctx()
    limit = ctx.settings.sync_export_limit
    st.header("Export")
    if service.fits_immediate(total, ctx.settings):
        st.caption(f"{total:,} records: download them now. Files are built when you click.")
        today = datetime.now(UTC)
        cols = st.columns(3)
        for col, fmt in zip(cols, FORMATS, strict=True):
            name = formats.filename(fmt, today, tag=formats.range_tag(flt.start, flt.end))
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
st.caption(INTRO)
_restore()
_follow_view(who)
_follow_link()
flt, typed = _filter_form(who)
_warn(who, typed)
_opened_note(typed)
_views_panel(who, flt)
_sync_url(typed)
top = st.container()  # where a record opened by its link goes when the rows lack it
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
        _empty(who)
    _record_section(who, [], top)
    st.stop()
_charts(who, flt, data)
rows = _preview(who, flt, data)
_sync_url(typed)  # again: a selected row changed the open record
_record_section(who, rows, top)
if who.can_export:
    _export(who, flt, s.total)
