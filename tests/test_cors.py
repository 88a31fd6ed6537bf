"""CORS: an allow-list, none by default, ``*`` only when asked and never with credentials;
preflights answered, refused ones in JSON (real sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway_helpers import Gateway, ask, running_gateway

APP = "https://app.example"
EVIL = "https://evil.example"
KEY = "sk-cors-0123456789abcdef"


def preflight(origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


@pytest.fixture(scope="module")
def allow_list() -> Iterator[Gateway]:
    with running_gateway(cors_origin=(APP, "http://localhost:5173"), api_keys=(KEY,)) as gw:
        yield gw


def test_no_cors_by_default() -> None:
    with running_gateway() as gw, httpx.Client(base_url=gw.url) as client:
        response = client.get("/v1/models", headers={"Origin": APP})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        response = client.options("/v1/streams", headers=preflight(APP))
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert "access-control-allow-origin" not in response.headers


def test_an_allowed_origin_gets_its_preflight_and_headers(allow_list: Gateway) -> None:
    with httpx.Client(base_url=allow_list.url) as client:
        response = client.options("/v1/streams", headers=preflight(APP))
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-credentials"] == "true"
        allowed = response.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "content-type", "last-event-id", "accept"):
            assert header in allowed
        assert "DELETE" in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-max-age"] == "600"
        # The preflight needs no key (browsers never send one with it).
        preflight_events = preflight(APP, "GET", "last-event-id")
        response = client.options("/v1/streams/st_x/events", headers=preflight_events)
        assert response.status_code == 200

        created = client.post(
            "/v1/streams",
            json=ask("[[tokens:2]]"),
            headers={"Origin": APP, "Authorization": f"Bearer {KEY}"},
        )
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == APP
        exposed = created.headers["access-control-expose-headers"].lower()
        for header in ("x-ssegate-stream-id", "x-ssegate-read-token", "retry-after"):
            assert header in exposed


def test_errors_carry_cors_headers_so_the_page_can_read_them(allow_list: Gateway) -> None:
    response = httpx.post(allow_list.url + "/v1/streams", json=ask("x"), headers={"Origin": APP})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize(
    "origin", [EVIL, "https://app.example.evil.example", "null", APP + ":8443"]
)
def test_other_origins_are_refused(allow_list: Gateway, origin: str) -> None:
    with httpx.Client(base_url=allow_list.url) as client:
        response = client.options("/v1/streams", headers=preflight(origin))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "cors_refused"
        assert "access-control-allow-origin" not in response.headers
        response = client.get(
            "/v1/models", headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
        )
        assert response.status_code == 200  # not a browser: the server answers, but...
        assert "access-control-allow-origin" not in response.headers  # ...no page may read it


def test_a_preflight_asking_for_other_headers_is_refused(allow_list: Gateway) -> None:
    response = httpx.options(
        allow_list.url + "/v1/streams", headers=preflight(APP, headers="x-custom-evil")
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "cors_refused"


def test_a_wildcard_only_when_given_and_never_with_credentials() -> None:
    with running_gateway(cors_origin=("*",)) as gw, httpx.Client(base_url=gw.url) as client:
        response = client.options("/v1/streams", headers=preflight(EVIL))
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        response = client.get("/v1/models", headers={"Origin": EVIL})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
