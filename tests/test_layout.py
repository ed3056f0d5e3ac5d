"""House rules as import contracts (pyproject.toml, `lint-imports`), and that they bite."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACES = {"http", "cli"}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def contracts() -> list[dict[str, object]]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["tool"]["importlinter"]["contracts"])


def test_every_domain_module_is_bound_by_the_faces_contract() -> None:
    domain = {
        f"audit_core.{p.stem}"
        for p in (ROOT / "audit_core").glob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
    (bound,) = [
        c for c in contracts() if c["name"] == "the domain imports neither face (http, cli)"
    ]
    assert set(bound["source_modules"]) == domain  # type: ignore[arg-type]
    subpackages = {p.name for p in (ROOT / "audit_core").iterdir() if (p / "__init__.py").exists()}
    assert subpackages == FACES


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("audit_core/record.py", "import streamlit", "never imports streamlit"),
        ("audit_core/store.py", "from audit_core.http import routes", "imports neither face"),
        ("audit_core/jobs.py", "from audit_core.cli import main", "imports neither face"),
        ("audit_core/cli/common.py", "from audit_core.http import links", "independent"),
        ("pages/exports.py", "import sqlalchemy", "pages hold no SQL"),
    ],
)
def test_a_broken_rule_fails_lint_imports(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    for name in ("audit_core", "pages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "app.py", "navigation.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert lint_imports(tmp_path).returncode == 0  # the copy is as good as the tree
    with open(tmp_path / module, "a") as fh:
        fh.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in b for b in broken), result.stdout[-2000:]


def test_requirements_are_pinned() -> None:
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "-")):
                assert "==" in line, f"{name}: {line} is not pinned"


def test_project_dependencies_match_requirements() -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        declared = tomllib.load(fh)["project"]["dependencies"]
    pinned = [
        ln.strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith(("#", "-"))
    ]
    assert sorted(declared) == sorted(pinned)
