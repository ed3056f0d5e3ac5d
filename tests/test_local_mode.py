"""Local mode (sign-in off) answers loopback clients only, however the server was started."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_core.http import LoopbackOnlyMiddleware


def make_app(local: bool) -> Starlette:
    async def hello(_request: object) -> PlainTextResponse:
        return PlainTextResponse("portal")

    return Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(LoopbackOnlyMiddleware, enabled=lambda: local)],
    )


def get(app: Starlette, client_host: str) -> httpx.Response:
    with TestClient(app, client=(client_host, 40000)) as client:
        return client.get("/")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1"])
def test_loopback_clients_are_served_in_local_mode(host: str) -> None:
    assert get(make_app(local=True), host).text == "portal"


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.0.10", "2001:db8::1", "testclient"])
def test_other_clients_are_refused_in_local_mode(host: str) -> None:
    response = get(make_app(local=True), host)
    assert response.status_code == 403
    assert response.json()["message"].startswith("sign-in is off (local mode)")


def test_with_sign_in_on_every_client_is_served() -> None:
    assert get(make_app(local=False), "10.1.2.3").text == "portal"
