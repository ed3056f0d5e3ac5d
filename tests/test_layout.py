"""House rules that code review keeps missing: the library stays free of the UI."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import audit_core

ROOT = Path(__file__).resolve().parent.parent


def test_audit_core_never_imports_streamlit() -> None:
    modules = [m.name for m in pkgutil.iter_modules(audit_core.__path__, "audit_core.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    if m != 'audit_core.__main__':\n"
        "        importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'streamlit'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


def test_pages_hold_no_sql() -> None:
    offenders = []
    for path in [ROOT / "navigation.py", *(ROOT / "pages").glob("*.py")]:
        text = path.read_text()
        if "sqlalchemy" in text or "SELECT " in text or "audit_core.query" in text:
            offenders.append(path.name)
    assert offenders == []


def test_requirements_are_pinned() -> None:
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "-")):
                assert "==" in line, f"{name}: {line} is not pinned"
