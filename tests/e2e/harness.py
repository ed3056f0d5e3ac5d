"""Reusable helpers for the browser (end-to-end) tests.

Everything here runs servers on the loopback interface only:

- a development OpenID Connect provider (npm ``oidc-provider``, see ``oidc/``),
- ``streamlit run app.py`` for the portal (or any app directory),
- Debian's chromium driven by Python Playwright.

Processes are started in their own session (process group) with a
parent-death signal, so a test run that is killed leaves no orphans, and are
stopped with SIGTERM to the whole group, then SIGKILL after a timeout.

Secrets for Streamlit are injected with the ``secrets.files`` config option
(``--secrets.files <path>`` on the command line), which *replaces* the list of
secrets files Streamlit reads: the repository's own ``.streamlit/secrets.toml``
and ``~/.streamlit/secrets.toml`` are neither read nor touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
OIDC_DIR = E2E_DIR / "oidc"
PROVIDER_SCRIPT = OIDC_DIR / "provider.mjs"
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_PR_SET_PDEATHSIG = 1
# Loaded once here: after fork() the child should not have to dlopen anything.
_LIBC = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_death_preexec(parent_pid: int) -> Callable[[], None]:
    """Build a preexec_fn that makes the child get SIGTERM when we die."""

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody
        # will ever send the signal, so leave now.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def start_process(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session with a parent-death signal.

    ``env`` is the child's *complete* environment (``None`` inherits ours).
    stdout and stderr both go to ``log_path`` (or to /dev/null); the path is
    kept on the returned object as ``proc.log_path`` for :func:`log_tail`.
    """
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out: Any = open(log_path, "wb")  # noqa: SIM115 - closed in stop_process
    else:
        out = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_preexec(os.getpid()),
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own copy of the descriptor
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it after ``timeout``."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # The leader may be gone while others in its group linger.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def log_tail(source: subprocess.Popen[Any] | str | os.PathLike[str] | None, lines: int = 60) -> str:
    """Return the last ``lines`` lines of a process log (or a log path)."""
    path: Any = getattr(source, "log_path", source)
    if path is None or isinstance(path, subprocess.Popen):
        return "<no log captured>"
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def start_and_wait(
    cmd: list[str],
    url: str,
    ready: Callable[[int, str], bool],
    *,
    env: dict[str, str],
    cwd: Any,
    log_path: Any,
    timeout: float,
) -> subprocess.Popen[Any]:
    """Start a server and wait until ``url`` answers as ``ready`` says; stop it on failure."""
    proc = start_process(cmd, env=env, cwd=cwd, log_path=log_path)
    try:
        wait_http(url, ready, timeout=timeout, proc=proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def wait_http(
    url: str,
    predicate: Callable[[int, str], bool] | None = None,
    timeout: float = 30.0,
    proc: subprocess.Popen[Any] | None = None,
    interval: float = 0.1,
) -> str:
    """Poll ``url`` until ``predicate(status, body)`` holds; return the body.

    The default predicate is "status 200". Fails fast, with the tail of the
    process log, if ``proc`` exits while we wait.
    """
    if predicate is None:
        predicate = lambda status, _body: status == 200  # noqa: E731
    deadline = time.monotonic() + timeout
    last = "no attempt"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with code {proc.returncode} while waiting "
                f"for {url}\n--- log tail ---\n{log_tail(proc)}"
            )
        try:
            with opener.open(url, timeout=2) as resp:
                status, body = resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            status, body = -1, ""
            last = repr(exc)
        else:
            last = f"HTTP {status}: {body[:200]!r}"
        if status >= 0:
            if predicate(status, body):
                return body
            last = f"HTTP {status}: {body[:200]!r}"
        if time.monotonic() >= deadline:
            tail = f"\n--- log tail ---\n{log_tail(proc)}" if proc is not None else ""
            raise TimeoutError(f"{url} not ready after {timeout:.0f}s (last: {last}){tail}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# OIDC provider
# --------------------------------------------------------------------------


def ensure_node_modules() -> None:
    """Install the provider's npm packages (``npm ci``) if they are missing.

    Skips the calling test only when node/npm are not installed at all.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed (run scripts/install-browser.sh)")
    if (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=OIDC_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"npm ci failed in {OIDC_DIR} (exit {result.returncode})\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def start_oidc_provider(
    port: int,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    post_logout_redirect_uri: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Start ``oidc/provider.mjs`` on 127.0.0.1:``port`` and wait for discovery."""
    ensure_node_modules()
    node = shutil.which("node")
    assert node is not None
    cmd = [
        node,
        str(PROVIDER_SCRIPT),
        "--port",
        str(port),
        "--client-id",
        client_id,
        "--client-secret",
        client_secret,
        "--redirect-uri",
        redirect_uri,
        "--post-logout-redirect-uri",
        post_logout_redirect_uri or redirect_uri,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
    env["NODE_ENV"] = "development"
    return start_and_wait(
        cmd,
        f"http://127.0.0.1:{port}/.well-known/openid-configuration",
        lambda status, body: status == 200 and '"issuer"' in body,
        env=env,
        cwd=OIDC_DIR,
        log_path=log_path,
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# Streamlit
# --------------------------------------------------------------------------


def auth_secrets_toml(
    *,
    app_port: int,
    provider_port: int,
    client_id: str,
    client_secret: str,
    cookie_secret: str,
    prompt: str | None = "login",
) -> str:
    """Text of a secrets.toml with an ``[auth]`` section for the test provider."""

    def q(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[auth]",
        f"redirect_uri = {q(f'http://127.0.0.1:{app_port}/oauth2callback')}",
        f"cookie_secret = {q(cookie_secret)}",
        f"client_id = {q(client_id)}",
        f"client_secret = {q(client_secret)}",
        "server_metadata_url = "
        + q(f"http://127.0.0.1:{provider_port}/.well-known/openid-configuration"),
    ]
    if prompt:
        lines.append(f"client_kwargs = {{ prompt = {q(prompt)} }}")
    return "\n".join(lines) + "\n"


def start_streamlit(
    app_dir: str | os.PathLike[str],
    port: int,
    env: Mapping[str, str] | None = None,
    secrets_toml_text: str | None = None,
    *,
    app_file: str = "app.py",
    log_path: str | os.PathLike[str] | None = None,
    secrets_path: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """Run ``python -m streamlit run app.py`` in ``app_dir`` on 127.0.0.1:``port``.

    ``env`` holds variables added to (or overriding) our own environment.

    With ``secrets_toml_text``, the text is written to ``secrets_path``
    (default: next to ``log_path``, else a file in a fresh temporary
    directory) and Streamlit is told to read *only* that file via
    ``--secrets.files``; the app's own ``.streamlit/secrets.toml`` is left
    alone. Without it, Streamlit reads its usual secrets files.

    Returns once ``/_stcore/health`` answers ``ok``.
    """
    app_dir = Path(app_dir).resolve()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    child_env["PYTHONUNBUFFERED"] = "1"
    if env:
        child_env.update(env)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        app_file,
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
    ]
    if secrets_toml_text is not None:
        if secrets_path is None:
            if log_path is not None:
                secrets_path = Path(log_path).with_name(f"secrets-{port}.toml")
            else:
                import tempfile

                secrets_path = Path(tempfile.mkdtemp(prefix="e2e-secrets-")) / "secrets.toml"
        secrets_path = Path(secrets_path)
        secrets_path.parent.mkdir(parents=True, exist_ok=True)
        secrets_path.write_text(secrets_toml_text)
        secrets_path.chmod(0o600)
        # A path, not a list: the option then holds exactly this one file.
        cmd += ["--secrets.files", str(secrets_path)]
    cmd += list(extra_args)
    return start_and_wait(
        cmd,
        f"http://127.0.0.1:{port}/_stcore/health",
        lambda status, body: status == 200 and body.strip() == "ok",
        env=child_env,
        cwd=app_dir,
        log_path=log_path,
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """True for data:/blob:/about: URLs and http(s)/ws(s) URLs to loopback hosts."""
    parts = urlsplit(url)
    if parts.scheme in {"data", "blob", "about"}:
        return True
    return _is_loopback_host(parts.hostname)


def launch_browser(playwright: Any, **kwargs: Any) -> Any:
    """Launch Debian's headless chromium (skip the test if it is missing)."""
    if not os.access(CHROMIUM_PATH, os.X_OK):
        pytest.skip(f"{CHROMIUM_PATH} not installed (run scripts/install-browser.sh)")
    options: dict[str, Any] = {
        "executable_path": CHROMIUM_PATH,
        "headless": True,
        "args": list(CHROMIUM_ARGS),
    }
    options.update(kwargs)
    return playwright.chromium.launch(**options)


def new_context(browser: Any, **kwargs: Any) -> Any:
    """A fresh browser context that aborts every non-loopback request."""
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}
    options.update(kwargs)
    context = browser.new_context(**options)

    def _route(route: Any) -> None:
        if is_loopback_url(route.request.url):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", _route)
    return context


@contextlib.contextmanager
def running(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """Context manager that stops ``proc`` on exit."""
    try:
        yield proc
    finally:
        stop_process(proc)
