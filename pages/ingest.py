"""Ingest: upload a JSON / JSONL / CSV file in the seed's shape, check it, then confirm."""

from __future__ import annotations

import io

import streamlit as st

from audit_core import ingest
from audit_core.access import Principal
from audit_core.errors import AuditError
from audit_core.views import code
from pages import common


def _opener(data: bytes):  # noqa: ANN202 - a zero-argument callable returning a byte stream
    return lambda: io.BytesIO(data)


def _report(report: ingest.IngestReport) -> None:
    cols = st.columns(4)
    cols[0].metric("Records in file", f"{report.total:,}")
    cols[1].metric("New", f"{report.new:,}")
    cols[2].metric("Already stored", f"{report.already_stored:,}")
    cols[3].metric("Refused", f"{report.bad:,}")
    if report.problems:
        whole = any(pos == 0 for pos, _ in report.problems)  # the file's shape, not a record
        st.error(
            "This file was refused, so nothing from it can be added. Fix it and upload it again."
            if whole
            else f"{report.bad:,} record(s) refused, so nothing from this file can be added. "
            "Fix them and upload the file again."
        )
        st.dataframe(
            {"record": [p for p, _ in report.problems], "reason": [r for _, r in report.problems]},
            hide_index=True,
            width="stretch",
        )
        if whole:
            st.caption("Record 0 is the file as a whole.")
        if report.bad > len(report.problems):
            st.caption(f"Showing the first {len(report.problems)} of {report.bad:,}.")


def main(who: Principal) -> None:
    ctx = common.ctx()
    st.title("Ingest")
    st.write(
        "Load records in the export's own shapes: the JSON envelope, JSON Lines or CSV with "
        "the seed's header. Each record's checksum is checked; a file is added whole or not "
        "at all, and records already stored are skipped."
    )
    upload = st.file_uploader(
        "Audit file", type=["json", "jsonl", "ndjson", "csv"], key="ingest_file"
    )
    if upload is None:
        st.info(
            "Choose a file to see what it would add. Nothing changes until you confirm.",
            icon=":material/upload_file:",
        )
        return
    try:
        fmt = ingest.detect_format(upload.name)
    except AuditError as exc:
        st.error("This file cannot be checked:")
        st.text(exc.message)  # quotes the file name: text, never Markdown
        return
    data = upload.getvalue()
    marker = (upload.file_id, len(data))
    if st.session_state.get("ingest_checked_for") != marker:
        with st.spinner("Checking every record..."):
            checked = ingest.check(ctx.engine, _opener(data), fmt)
        if checked.bad:
            reason = ingest.refusal(checked.problems, checked.bad)
            ingest.record_refusal(
                ctx.engine, upload.name, checked.sha256, reason, who, ctx.settings
            )
        st.session_state["ingest_report"] = checked
        st.session_state["ingest_checked_for"] = marker
        st.session_state.pop("ingest_done", None)
    report: ingest.IngestReport = st.session_state["ingest_report"]
    st.header(f"Check of {code(upload.name)}")
    _report(report)
    done = st.session_state.get("ingest_done")
    if done is not None:
        st.success(f"Added {done:,} records to the log.")
        return
    if report.bad:
        return
    if report.new == 0:
        st.info("Every record in this file is already stored: nothing to add.")
        return
    if st.button(f"Add {report.new:,} records", type="primary", key="ingest_confirm"):
        try:
            with st.spinner("Adding records..."):
                result = ingest.ingest(
                    ctx.engine,
                    _opener(data),
                    fmt,
                    name=upload.name,
                    principal=who,
                    settings=ctx.settings,
                )
        except AuditError as exc:
            st.error("The file was refused, so nothing from it was added:")
            st.text(exc.message)  # names parts of the file: shown as text, never Markdown
            return
        common.forget_reads()
        st.session_state["ingest_done"] = result.added
        st.rerun()


main(common.frame(admins_only=True))
