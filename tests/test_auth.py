"""Gateway API keys, stream ownership and read tokens, over real sockets (and the bind check in
a real subprocess)."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest
from openai import OpenAI

from gateway_helpers import Gateway, ask, payloads, running_gateway
from ssegate import Decoder
from ssegate.gateway import SecurityConfig, Settings
from ssegate.gateway._auth import bind_refusal
from ssegate.gateway._keys import KeyRing, parse_key_entries, split_key_entries
from ssegate.gateway._logging import redact_tokens
from ssegate.gateway._tokens import ReadTokens

ALICE = "sk-alice-4f1c2b9e7d6a5c3b"
BOB = "sk-bob-8e7d6c5b4a392817"
UNNAMED = "sk-plain-0a1b2c3d4e5f6a7b"
KEYS = (f"alice:{ALICE}", f"bob:{BOB}", UNNAMED)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running_gateway(api_keys=KEYS, disconnect_grace=30.0, rate_limit=0) as gateway:
        yield gateway


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


def start(client: httpx.Client, key: str, text: str = "[[tokens:3]]", **extra: Any) -> Any:
    response = client.post("/v1/streams", json=ask(text, **extra), headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def read_all(client: httpx.Client, url: str, **kwargs: Any) -> list[tuple[int, str, Any]]:
    events = []
    with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        decoder = Decoder()
        for chunk in response.iter_raw():
            events += decoder.feed(chunk)
    return payloads(events)


# -- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer sk-wrong-0000000000000000"}, "invalid_api_key"),
        ({"Authorization": f"Bearer {ALICE}x"}, "invalid_api_key"),
        ({"Authorization": f"Basic {ALICE}"}, "invalid_api_key"),
        ({"Authorization": "Bearer"}, "invalid_api_key"),
        ({"X-Api-Key": ALICE}, "missing_api_key"),
    ],
)
def test_streams_routes_refuse_a_missing_or_wrong_key(
    client: httpx.Client, headers: dict[str, str], code: str
) -> None:
    for method, path in (
        ("POST", "/v1/streams"),
        ("GET", "/v1/streams/st_AAAAAAAAAAAAAAAAAAAAAA"),
        ("GET", "/v1/streams/st_AAAAAAAAAAAAAAAAAAAAAA/events"),
        ("DELETE", "/v1/streams/st_AAAAAAAAAAAAAAAAAAAAAA"),
    ):
        response = client.request(method, path, json=ask("hi"), headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == code
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_bad_key_is_refused_before_the_body_is_looked_at(client: httpx.Client) -> None:
    response = client.post(
        "/v1/streams", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401


def test_openai_routes_answer_401_in_openai_shape_and_the_sdk_raises(gw: Gateway) -> None:
    raw = httpx.get(gw.url + "/v1/models")
    assert raw.status_code == 401
    error = raw.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "missing_api_key"
    with OpenAI(base_url=gw.url + "/v1", api_key="sk-not-a-key", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as raised:
            sdk.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()
    with OpenAI(base_url=gw.url + "/v1", api_key=UNNAMED, max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["mock"]
        answer = sdk.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "[[tokens:2]]"}]
        )
        assert answer.choices[0].message.content == "tok0 tok1 "


def test_open_routes_stay_open(gw: Gateway, client: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/", "/static/ssegate.js", "/learn/"):
        assert client.get(path).status_code == 200, path
    with client.stream("GET", "/learn/sseChat", params={"name": "x", "interval": "0"}) as r:
        assert r.status_code == 200


# -- ownership ---------------------------------------------------------------------------------


def test_another_keys_stream_is_404_like_a_missing_one(gw: Gateway, client: httpx.Client) -> None:
    created = start(client, ALICE, "[[tokens:50]] [[interval_ms:20]]", on_disconnect="continue")
    sid = created["id"]
    missing = client.get("/v1/streams/st_AAAAAAAAAAAAAAAAAAAAAA", headers=auth(BOB))
    assert missing.status_code == 404
    for key in (BOB, UNNAMED):
        for method, path, headers in (
            ("GET", f"/v1/streams/{sid}", {}),
            ("GET", f"/v1/streams/{sid}/events", {}),
            ("GET", f"/v1/streams/{sid}/events", {"Last-Event-ID": "1"}),
            ("DELETE", f"/v1/streams/{sid}", {}),
        ):
            response = client.request(method, path, headers={**auth(key), **headers})
            assert response.status_code == 404, (key, method, path)
            assert response.json() == missing.json()
    # Bob's DELETE did nothing: the stream is still running, and Alice reads it to the end.
    status = client.get(f"/v1/streams/{sid}", headers=auth(ALICE)).json()
    assert status["status"] == "running"
    events = read_all(client, f"/v1/streams/{sid}/events", headers=auth(ALICE))
    assert events[-1][1] == "done"
    resumed = read_all(
        client, f"/v1/streams/{sid}/events", headers={**auth(ALICE), "Last-Event-ID": "10"}
    )
    assert resumed == events[10:]


def test_only_the_owner_cancels(client: httpx.Client) -> None:
    created = start(client, BOB, "[[tokens:500]] [[interval_ms:20]]", on_disconnect="continue")
    response = client.delete(f"/v1/streams/{created['id']}", headers=auth(ALICE))
    assert response.status_code == 404
    response = client.delete(f"/v1/streams/{created['id']}", headers=auth(BOB))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


def test_a_completion_started_with_the_sdk_belongs_to_its_key(gw: Gateway) -> None:
    with OpenAI(base_url=gw.url + "/v1", api_key=ALICE, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="mock", messages=[{"role": "user", "content": "[[tokens:2]]"}]
        )
    sid = raw.headers["x-ssegate-stream-id"]
    assert httpx.get(f"{gw.url}/v1/streams/{sid}", headers=auth(ALICE)).status_code == 200
    assert httpx.get(f"{gw.url}/v1/streams/{sid}", headers=auth(BOB)).status_code == 404


def test_stream_ids_carry_128_random_bits(client: httpx.Client) -> None:
    ids = {start(client, UNNAMED)["id"] for _ in range(20)}
    assert len(ids) == 20
    for sid in ids:
        assert sid.startswith("st_")
        assert len(sid) - 3 >= 22  # 16 bytes of token_urlsafe: 22 characters, 6 bits each


# -- read tokens -------------------------------------------------------------------------------


def test_the_read_token_opens_its_stream_without_the_key(gw: Gateway, client: httpx.Client) -> None:
    created = start(client, ALICE, "[[tokens:5]]")
    sid, token = created["id"], created["token"]
    assert created["events_url"] == f"/v1/streams/{sid}/events?token={token}"
    assert created["status_url"] == f"/v1/streams/{sid}?token={token}"
    assert created["token_expires_at"] > time.time() + 60
    assert ALICE not in str(created)
    events = read_all(client, created["events_url"])  # no Authorization header
    assert events[0][1] == "start"
    assert events[-1][1] == "done"
    assert client.get(created["status_url"]).json()["status"] == "done"
    resumed = read_all(client, created["events_url"], headers={"Last-Event-ID": "3"})
    assert resumed == events[3:]


def test_the_one_request_stream_carries_its_read_token(client: httpx.Client) -> None:
    headers = {**auth(BOB), "Accept": "text/event-stream"}
    with client.stream("POST", "/v1/streams", json=ask("[[tokens:2]]"), headers=headers) as r:
        assert r.status_code == 200
        token = r.headers["x-ssegate-read-token"]
        sid = r.headers["x-ssegate-stream-id"]
        r.read()
    assert client.get(f"/v1/streams/{sid}", params={"token": token}).status_code == 200


def test_a_token_is_scoped_to_its_stream_and_to_reading(client: httpx.Client) -> None:
    x = start(client, ALICE, "[[tokens:400]] [[interval_ms:20]]", on_disconnect="continue")
    y = start(client, ALICE, "[[tokens:2]]")
    for path in (f"/v1/streams/{y['id']}", f"/v1/streams/{y['id']}/events"):
        response = client.get(path, params={"token": x["token"]})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"
    # Reading only: no cancel, no new stream, no other route.
    for method, path in (
        ("DELETE", f"/v1/streams/{x['id']}"),
        ("POST", "/v1/streams"),
        ("GET", "/v1/models"),
    ):
        response = client.request(method, path, params={"token": x["token"]}, json=ask("hi"))
        assert response.status_code == 401, (method, path)
    status = client.get(f"/v1/streams/{x['id']}", params={"token": x["token"]}).json()
    assert status["status"] == "running"
    assert client.delete(f"/v1/streams/{x['id']}", headers=auth(ALICE)).status_code == 200


def test_a_tampered_or_foreign_token_fails(client: httpx.Client) -> None:
    created = start(client, ALICE)
    sid, token = created["id"], created["token"]
    version, expires, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for bad in (
        f"{version}.{expires}.{flipped}",
        f"{version}.{int(expires) + 3600}.{signature}",  # a later expiry, same signature
        f"v2.{expires}.{signature}",
        token + "x",
        "",
        "v1..",
        ALICE,  # an API key is not a token
    ):
        response = client.get(f"/v1/streams/{sid}", params={"token": bad})
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "invalid_token"
    # Signed with another secret: a gateway with other keys.
    other = ReadTokens.for_settings(Settings.from_options(api_keys=(BOB,)), KeyRing([(None, BOB)]))
    forged, _ = other.issue(sid)
    assert client.get(f"/v1/streams/{sid}", params={"token": forged}).status_code == 401


def test_a_token_with_a_non_canonical_expiry_fails(client: httpx.Client) -> None:
    created = start(client, ALICE)
    version, expires, signature = created["token"].split(".")
    for spelling in (f"0{expires}", f"00{expires}"):
        token = f"{version}.{spelling}.{signature}"  # the same number, signed the same
        response = client.get(f"/v1/streams/{created['id']}", params={"token": token})
        assert response.status_code == 401, spelling
        assert response.json()["error"]["code"] == "invalid_token"
    assert client.get(created["status_url"]).status_code == 200


def test_a_query_naming_the_token_twice_or_encoded_is_refused(client: httpx.Client) -> None:
    created = start(client, ALICE)
    sid, token = created["id"], created["token"]
    base = f"/v1/streams/{sid}"
    for query in (
        f"token={token}&token={token}",
        f"toke%6e={token}",
        f"%74oken={token}",
        f"x_token=1&toke%6E={token}",
    ):
        response = client.get(f"{base}?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "invalid_token_parameter"
    assert client.get(f"{base}?x_token=1&token={token}").status_code == 200


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("GET /v1/streams/s/events?token=SECRET HTTP/1.1", "?token=[redacted]"),
        ("GET /v1/streams/s/events?x_token=1&toke%6e=SECRET", "&toke%6e=[redacted]"),
        ("GET /v1/streams/s?%74oken=SECRET&a=b", "?%74oken=[redacted]&a=b"),
        ("GET /v1/streams/s?TOKEN=SECRET", "?TOKEN=[redacted]"),
        ("GET /v1/streams/s?a=1&t%6Fken=SECRET#x", "&t%6Fken=[redacted]"),
    ],
)
def test_access_lines_are_redacted_after_decoding(line: str, redacted: str) -> None:
    out = redact_tokens(line)
    assert "SECRET" not in out
    assert redacted in out


def test_read_token_requests_are_rate_limited_per_stream() -> None:
    rate, burst = 0.5, 20
    with (
        running_gateway(api_keys=KEYS, rate_limit=rate, rate_burst=burst) as gw,
        httpx.Client(base_url=gw.url, timeout=10.0) as client,
    ):
        first, second = start(client, ALICE), start(client, ALICE)
        began = time.monotonic()
        codes = [client.get(first["status_url"]).status_code for _ in range(60)]
        refills = rate * (time.monotonic() - began)
        assert burst <= codes.count(200) <= burst + refills + 1, codes
        assert set(codes) == {200, 429}
        refused = client.get(first["status_url"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # Another stream's tokens, and the key itself, have buckets of their own.
        assert client.get(second["status_url"]).status_code == 200
        assert client.get(f"/v1/streams/{first['id']}", headers=auth(ALICE)).status_code == 200


def test_an_expired_token_fails(gw: Gateway, client: httpx.Client) -> None:
    sid = start(client, ALICE)["id"]
    keys = KeyRing.from_config(gw.settings.security)
    past = ReadTokens.for_settings(gw.settings, keys, clock=lambda: time.time() - 10_000)
    expired, expires = past.issue(sid)
    assert expires < time.time()
    response = client.get(f"/v1/streams/{sid}/events", params={"token": expired})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_expired"
    fresh, _ = ReadTokens.for_settings(gw.settings, keys).issue(sid)
    assert client.get(f"/v1/streams/{sid}", params={"token": fresh}).status_code == 200


def test_tokens_verify_on_any_instance_with_the_same_keys_or_secret() -> None:
    secret = "a-shared-token-secret-for-both"
    with (
        running_gateway(api_keys=KEYS) as a,
        running_gateway(mock=a.mock, api_keys=tuple(reversed(KEYS))) as b,
        running_gateway(mock=a.mock, api_keys=(f"alice:{ALICE}",)) as c,
        running_gateway(mock=a.mock, api_keys=KEYS, token_secret=secret) as d,
        running_gateway(mock=a.mock, api_keys=(f"bob:{BOB}",), token_secret=secret) as e,
    ):
        created = httpx.post(a.url + "/v1/streams", json=ask("x"), headers=auth(ALICE)).json()
        path = f"/v1/streams/{created['id']}"
        # Same keys (any order): the token passes, and the stream is simply not in b's store.
        assert httpx.get(b.url + path, params={"token": created["token"]}).status_code == 404
        assert httpx.get(c.url + path, params={"token": created["token"]}).status_code == 401
        made = httpx.post(d.url + "/v1/streams", json=ask("x"), headers=auth(ALICE)).json()
        path = f"/v1/streams/{made['id']}"
        assert httpx.get(e.url + path, params={"token": made["token"]}).status_code == 404


# -- keys: parsing, comparison, logging --------------------------------------------------------


def test_key_entries_and_files(tmp_path: Path) -> None:
    assert split_key_entries(" a:k1-aaaaaaaaaaaaaaaa , ,k2-bbbbbbbbbbbbbbbb,") == (
        "a:k1-aaaaaaaaaaaaaaaa",
        "k2-bbbbbbbbbbbbbbbb",
    )
    assert parse_key_entries(["ci:abc:def"], source="t") == [("ci", "abc:def")]
    file = tmp_path / "keys"
    file.write_text(
        "# gateway keys\n\nalice:" + ALICE + "  # Alice's laptop\n" + UNNAMED + "\n   \n",
        encoding="utf-8",
    )
    ring = KeyRing.from_config(SecurityConfig(api_keys=(f"bob:{BOB}",), api_keys_file=str(file)))
    assert len(ring) == 3
    assert ring.owners[:2] == ["bob", "alice"]
    assert ring.owners[2].startswith("key-")
    assert len(ring.owners[2]) == 16
    alice = ring.match(ALICE.encode())
    assert alice is not None
    assert alice.owner == "alice"
    unnamed = ring.match(UNNAMED.encode())
    assert unnamed is not None
    assert unnamed.owner == ring.owners[2]
    assert ring.match(b"") is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["a b"], "visible ASCII"),
        (["name:"], "visible ASCII"),
        (["bad name!:key-aaaaaaaaaaaaaaaa"], "key name"),
        ([f"x:{ALICE}", f"x:{BOB}"], "named 'x'"),
        ([ALICE, f"again:{ALICE}"], "configured twice"),
        (["é" * 20], "visible ASCII"),
    ],
)
def test_bad_key_entries_are_refused_without_echoing_the_key(
    entries: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        KeyRing(parse_key_entries(entries, source="SSEGATE_API_KEYS"))
    for entry in entries:
        secret = entry.partition(":")[2] or entry
        assert secret not in str(raised.value)


def test_an_empty_or_missing_keys_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no key"):
        KeyRing.from_config(SecurityConfig(api_keys_file=str(empty)))
    with pytest.raises(ValueError, match="cannot read"):
        KeyRing.from_config(SecurityConfig(api_keys_file=str(tmp_path / "missing")))


def test_every_key_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing(parse_key_entries(KEYS, source="t"))
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (ALICE, BOB, UNNAMED, "nobody-0000000000000"):
        calls.clear()
        ring.match(presented.encode())
        assert len(calls) == 3, presented


def test_keys_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        running_gateway(api_keys=KEYS, log_content=True) as gw,
        httpx.Client(base_url=gw.url) as client,
    ):
        created = start(client, ALICE, "[[tokens:3]] secret question")
        read_all(client, created["events_url"])
        client.get("/v1/models", headers=auth(ALICE + "-wrong"))
        client.get("/v1/models", headers=auth(BOB))
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "secret question" in text  # --log-content is on: the prompt is there...
    assert "tok0 tok1 tok2" in text  # ...and the answer
    for key in (ALICE, BOB, UNNAMED):
        assert key not in text
    stream_lines = [r for r in caplog.records if r.name == "ssegate.streams"]
    assert any(getattr(r, "fields", {}).get("owner") == "alice" for r in stream_lines)


# -- bind check --------------------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_keys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ssegate", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SSEGATE_")},
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr
    assert "--insecure" in result.stderr


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        (Settings.from_options(host="0.0.0.0"), True),
        (Settings.from_options(host="::"), True),
        (Settings.from_options(host="192.168.1.10"), True),
        (Settings.from_options(host="example.com"), True),
        (Settings.from_options(host="127.0.0.1"), False),
        (Settings.from_options(host="127.0.0.2"), False),
        (Settings.from_options(host="::1"), False),
        (Settings.from_options(host="localhost"), False),
        (Settings.from_options(host="0.0.0.0", insecure=True), False),
        (Settings.from_options(host="0.0.0.0", api_keys=(ALICE,)), False),
    ],
)
def test_bind_refusal(settings: Settings, refused: bool) -> None:
    assert (bind_refusal(settings) is not None) is refused


# -- logs --------------------------------------------------------------------------------------


def _read_line(stream: IO[str], deadline: float) -> str:
    ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise AssertionError("the gateway wrote nothing in time")
    return stream.readline()


def test_json_logs_have_one_line_per_stream_and_no_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEGATE_")}
    env["SSEGATE_API_KEYS"] = f"alice:{ALICE}"
    process = subprocess.Popen(
        [sys.executable, "-m", "ssegate", "serve", "--port", "0", "--log-json", "--demo-rate", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            line = _read_line(process.stderr, deadline)
            assert line, "the gateway exited"
            lines.append(line)
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(found[1]) if found else None
        url = f"http://127.0.0.1:{port}"
        created = httpx.post(url + "/v1/streams", json=ask("hello"), headers=auth(ALICE)).json()
        with httpx.stream("GET", url + created["events_url"]) as response:
            assert response.status_code == 200
            response.read()
        assert httpx.get(url + "/v1/models", headers=auth(BOB)).status_code == 401
        # The token under an encoded name, beside a decoy whose name ends in "token": refused,
        # and redacted from the access line all the same.
        sneaky = f"{url}/v1/streams/{created['id']}/events?x_token=1&toke%6e={created['token']}"
        assert httpx.get(sneaky).status_code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    lines += rest.splitlines()
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    for record in records:
        assert {"ts", "level", "logger", "message"} <= set(record)
    [stream_line] = [r for r in records if r["logger"] == "ssegate.streams"]
    assert stream_line["stream_id"] == created["id"]
    assert stream_line["owner"] == "alice"
    assert stream_line["status"] == "done"
    assert stream_line["duration_s"] >= 0
    assert stream_line["completion_tokens"] > 0
    access = [r["message"] for r in records if r["logger"] == "uvicorn.access"]
    assert any("token=[redacted]" in line for line in access), access
    text = "\n".join(lines)
    for secret in (ALICE, BOB, created["token"]):
        assert secret not in text
    assert "hello" not in text  # no --log-content: no prompts
    assert not [r for r in records if r["logger"] == "ssegate.content"]
