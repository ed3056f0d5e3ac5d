"""Exports: background export jobs, their progress, signed download links, cancel."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from audit_core import jobs, service, views
from audit_core.access import Principal
from audit_core.errors import AuditError
from audit_core.http import links
from pages import common

REFRESH = timedelta(seconds=2)
FLASH_KEY = "exports_flash"  # (kind, Markdown message) left by a cancel for the next run
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


def _cancel(job: jobs.JobInfo, who: Principal) -> None:
    """Cancel a queued job and say so on the next run (st.rerun() would lose it now)."""
    ctx = common.ctx()
    try:
        jobs.cancel(ctx.engine, job.job_id, who, ctx.settings)
    except AuditError as exc:  # e.g. a worker claimed it first
        st.session_state[FLASH_KEY] = ("warning", views.md(exc.message))
    else:
        st.session_state[FLASH_KEY] = ("success", f"Cancelled {views.code(job.job_id)}.")
    st.rerun()


def _confirmation() -> None:
    """Show, once, what the previous run's cancel did."""
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash is None:
        return
    kind, message = flash
    if kind == "success":
        st.toast(message, icon=":material/check_circle:")
        st.success(message, icon=":material/check_circle:")
    else:
        st.warning(message)


def _timeline(job: jobs.JobInfo) -> None:
    """When it was requested, started and finished (UTC); progress while it is active.

    The worker reports rows written at each lease heartbeat (AUDIT_WORKER_HEARTBEAT_SECONDS),
    so a large job's bar moves every few seconds as the fragment redraws.
    """
    times = views.job_times(job)
    if job.state not in jobs.ACTIVE:
        elapsed = views.job_elapsed(job)
        st.caption(views.md(f"{times} ({elapsed})" if elapsed else times))
        return
    st.caption(views.md(times))
    value = views.progress(job.rows_written, job.estimated_records, job.state)
    st.progress(value, text=views.md(views.job_progress_text(job)))
    if job.state == "queued" and job.last_error:
        st.caption(f"The last attempt failed and will be retried: {views.md(job.last_error)}")


def _job(job: jobs.JobInfo, who: Principal) -> None:
    """One job's card: what, for whom, when, its progress or result, and what can be done."""
    ctx = common.ctx()
    with st.container(border=True):
        head, action = st.columns([5, 1])
        head.markdown(
            f"{STATE_ICONS.get(job.state, '')} **{views.code(job.job_id)}** · "
            f"{views.md(job.state)} · {views.md(job.format.upper())} · "
            f"{job.estimated_records:,} records"
            + (f" · requested by {views.code(job.requested_by)}" if who.is_admin else "")
        )
        head.caption(views.md(job.filter_text or "All records"))
        _timeline(job)
        if job.state == "queued" and action.button("Cancel", key=f"exports_cancel_{job.job_id}"):
            _cancel(job, who)
        if job.state == "completed":
            left = views.time_left(job.expires_at)
            st.caption(
                f"{job.rows_written:,} rows · {views.human_size(job.file_size)} · "
                f"expires in {left}  \nSHA-256 {views.code(job.file_sha256 or '')}"
            )
            url = links.sign_download(job.job_id, who.email, ctx.settings)
            action.link_button("Download", url, type="primary", icon=":material/download:")
            if ctx.signer is not None:
                evidence = st.columns([1, 1, 4])
                for col, part, label in (
                    (evidence[0], "/manifest", "Manifest"),
                    (evidence[1], "/manifest.sig", "Signature"),
                ):
                    part_url = links.sign_download(job.job_id, who.email, ctx.settings, part=part)
                    col.link_button(label, part_url, icon=":material/verified:")
        elif job.state == "failed":
            st.error(views.md(job.last_error or "The export failed."))
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


def _signed(who: Principal) -> None:
    """The newest signed exports (downloads, API streams, CLI files, jobs) and their evidence."""
    ctx = common.ctx()
    with ctx.engine.connect() as conn:
        found = service.signed_exports(conn, who)
    st.header("Signed exports")
    if not found:
        st.caption("No signed exports yet: every download from Explore and every job is signed.")
        return
    st.caption(
        "Check a file with its manifest and signature on the Verify page, or offline with "
        "the verifier and the public key."
    )
    for item in found:
        c_name, c_manifest, c_sig = st.columns([4, 1, 1])
        c_name.markdown(
            f"{views.code(item.export_id)} · {views.code(item.file_name)} · "
            f"{views.md(item.channel)} · {views.md(views.when(item.signed_at))}"
            + (f" · {views.code(item.requested_by)}" if who.is_admin else "")
        )
        stem = item.file_name
        for col, suffix, attr, label, mime in (
            (c_manifest, ".manifest.json", "manifest", "Manifest", "application/json"),
            (c_sig, ".manifest.sig", "signature", "Signature", "application/octet-stream"),
        ):
            col.download_button(
                label,
                data=lambda export_id=item.export_id, attr=attr: _evidence(who, export_id, attr),
                file_name=stem + suffix,
                mime=mime,
                key=f"exports_{attr}_{item.export_id}",
                on_click="ignore",
            )


def _evidence(who: Principal, export_id: str, attr: str) -> bytes:
    with common.ctx().engine.connect() as conn:
        signed = service.manifest_for(conn, export_id, who)
    return b"" if signed is None else bytes(getattr(signed, attr))


who = common.frame()
st.title("Exports")
st.caption(
    "Large exports are built in the background. Files expire "
    f"{common.ctx().settings.export_ttl_hours} hours after they complete; download "
    "links are signed for you and last ten minutes."
)
by, state = _filters(who)
_confirmation()
with common.ctx().engine.connect() as _conn:
    _running = any(j.state in jobs.ACTIVE for j in jobs.list_for(_conn, who, limit=100))
if _running:
    _live(who, by, state)
else:
    _jobs(who, by, state)
_signed(who)
