"""The portal's navigation script (placeholder until the pages land)."""

import streamlit as st

from audit_core.portal import context

ctx = context()
st.title("Audit Export Portal")
if ctx.demo:
    st.info("Demo data: no AUDIT_DATABASE_URL is configured.")
st.write("The portal's pages are on their way.")
