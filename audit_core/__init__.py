"""audit_core: the Audit Export Portal's library. It never imports streamlit."""

__version__ = "0.1.0"
