"""Exports: background export jobs, their progress, signed download links, cancel."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from audit_core import jobs, views
from audit_core.access import Principal
from audit_core.errors import AuditError
from audit_core.http import links
from pages import common

REFRESH = timedelta(seconds=2)
STATE_ICONS = {
    "queued": ":material/schedule:",
    "processing": ":material/sync:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "expired": ":material/timer_off:",
}


def _filters(who: Principal) -> tuple[str | None, str | None]:
    """Admins see everyone's jobs and may narrow them by person and state."""
    if not who.is_admin:
        return None, None
    c_who, c_state = st.columns(2)
    by = c_who.text_input("Requested by", key="exports_by", placeholder="anyone")
    state = c_state.selectbox("State", ["any", *jobs.STATES], key="exports_state")
    return (by.strip() or None), (None if state == "any" else state)


def _job(job: jobs.JobInfo, who: Principal) -> None:
    ctx = common.ctx()
    with st.container(border=True):
        head, action = st.columns([5, 1])
        head.markdown(
            f"{STATE_ICONS.get(job.state, '')} **{job.job_id}** · {job.state} · "
            f"{job.format.upper()} · {job.estimated_records:,} records"
            + (f" · requested by {job.requested_by}" if who.is_admin else "")
        )
        head.caption(job.filter_text or "All records")
        if job.state in jobs.ACTIVE:
            value = views.progress(job.rows_written, job.estimated_records, job.state)
            st.progress(value, text=f"{job.rows_written:,} of {job.estimated_records:,} rows")
        if job.state == "queued" and action.button("Cancel", key=f"exports_cancel_{job.job_id}"):
            try:
                jobs.cancel(ctx.engine, job.job_id, who, ctx.settings)
            except AuditError as exc:
                st.warning(exc.message)
            st.rerun()
        if job.state == "completed":
            left = views.time_left(job.expires_at)
            st.caption(
                f"{job.rows_written:,} rows · {views.human_size(job.file_size)} · "
                f"expires in {left}  \nSHA-256 {job.file_sha256}"
            )
            url = links.sign_download(job.job_id, who.email, ctx.settings)
            action.link_button("Download", url, type="primary", icon=":material/download:")
        elif job.state == "failed":
            st.error(job.last_error or "The export failed.")
        elif job.state == "expired":
            st.caption("The file has expired and was deleted; queue the export again if needed.")


def _jobs(who: Principal, by: str | None, state: str | None) -> bool:
    """Draw the job list; return True while any job is still running."""
    with common.ctx().engine.connect() as conn:
        found = jobs.list_for(conn, who, limit=100, state=state, requested_by=by)
    if not found:
        st.info(
            "No export jobs yet. Exports over the download limit are queued from the "
            "Explore page and show up here.",
            icon=":material/inbox:",
        )
        return False
    for job in found:
        _job(job, who)
    return any(j.state in jobs.ACTIVE for j in found)


@st.fragment(run_every=REFRESH)
def _live(who: Principal, by: str | None, state: str | None) -> None:
    """Redraw every two seconds while jobs run; stop refreshing once all have finished."""
    if not _jobs(who, by, state):
        st.rerun()


who = common.frame()
st.title("Exports")
st.caption(
    "Large exports are built in the background. Files expire "
    f"{common.ctx().settings.export_ttl_hours} hours after they complete; download "
    "links are signed for you and last ten minutes."
)
by, state = _filters(who)
with common.ctx().engine.connect() as _conn:
    _running = any(j.state in jobs.ACTIVE for j in jobs.list_for(_conn, who, limit=100))
if _running:
    _live(who, by, state)
else:
    _jobs(who, by, state)
