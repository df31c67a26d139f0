"""remask serve limits, keys, errors and metrics: every refusal is an OpenAI-shaped JSON error, never a 5xx."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from remask.errors import RemaskError
from remask.sampling import SampleConfig
from remask.sampling.config import SAMPLER_FIELDS
from remask.serve import KEY_ENV, REQUEST_FIELDS, ServerConfig, create_app, json_kind
from test_serve import CFG, TOK, Gated, byte_model, sse


@pytest.fixture(scope="module")
def mdm() -> nn.Module:
    return byte_model()


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    return err


def test_size_and_length_limits_name_the_limit(mdm):
    server = ServerConfig(max_body_bytes=200, max_prompt_tokens=10, max_tokens_limit=16)
    client = TestClient(create_app(mdm, TOK, defaults=CFG, server=server))
    err = error_of(client.post("/v1/completions", json={"prompt": "x" * 300}), 413)
    assert "exceeds this server's limit of 200 bytes" in err["message"] and err["code"] == "request_too_large"
    err = error_of(client.post("/v1/completions", json={"prompt": "x" * 11}), 400)
    assert "the prompt is 11 tokens; this server takes at most 10 (max_prompt_tokens)" in err["message"]
    err = error_of(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 400)
    assert "at most 10 (max_prompt_tokens)" in err["message"]  # the chat template counts too
    err = error_of(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 17}), 400)
    assert "max_tokens 17 exceeds this server's limit of 16 (max_tokens_limit)" in err["message"]
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 16}).status_code == 200
    err = error_of(TestClient(create_app(mdm, TOK, defaults=CFG, server=ServerConfig(max_batch_size=2)))
                   .post("/v1/completions", json={"prompt": ["a", "b", "c"]}), 400)
    assert "at most 2 (max_batch_size)" in err["message"]
    with pytest.raises(RemaskError, match="--max-queue must be positive"):
        ServerConfig(max_queue=0)


def test_api_keys(mdm, monkeypatch):
    client = TestClient(create_app(mdm, TOK, defaults=CFG, server=ServerConfig(api_key="k1, k2")))
    req = {"prompt": "a", "max_tokens": 8}
    r = client.post("/v1/completions", json=req)
    err = error_of(r, 401)
    assert err["code"] == "invalid_api_key" and "Authorization: Bearer" in err["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert error_of(client.get("/v1/models", headers={"Authorization": "Bearer k3"}), 401)["message"] == \
        "incorrect API key provided"
    for key in ("k1", "k2"):
        assert client.post("/v1/completions", json=req, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200  # open
    assert metric(client.get("/metrics").text, "remask_requests_total", route="/v1/models", status="401") == 1
    monkeypatch.setenv(KEY_ENV, "from-env")
    assert ServerConfig().keys() == ["from-env"] and ServerConfig(api_key="").keys() == []
    monkeypatch.delenv(KEY_ENV)
    assert ServerConfig().keys() == []


def test_model_names_and_route_errors(mdm):
    client = TestClient(create_app(mdm, TOK, defaults=CFG, server=ServerConfig(served_model_name="tiny")))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 8, "model": "tiny"}).status_code == 200
    for r in (client.post("/v1/completions", json={"prompt": "a", "model": "gpt-4"}),
              client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}], "model": "x"}),
              client.get("/v1/models/gpt-4")):
        err = error_of(r, 404)
        assert err["code"] == "model_not_found" and "this server serves \"tiny\"" in err["message"]
    assert error_of(client.get("/v1/completions"), 405)["type"] == "invalid_request_error"
    assert error_of(client.get("/nothing/here"), 404)["code"] == "not_found"
    assert "must be a string" in error_of(client.post("/v1/completions", json={"prompt": "a", "model": 3}), 400)["message"]


def test_queue_and_stream_limits_answer_429_with_retry_after(mdm):
    model = Gated(mdm)
    server = ServerConfig(max_queue=1, max_streams=2)
    with TestClient(create_app(model, TOK, defaults=CFG, server=server)) as client:
        scheduler = client.app.state.scheduler
        body = {"prompt": "a", "max_tokens": 8}
        first = threading.Thread(target=lambda: client.post("/v1/completions", json={**body, "stream": True}))
        first.start()
        assert model.entered.wait(10)  # running: the queue is empty
        second = threading.Thread(target=lambda: client.post("/v1/completions", json={**body, "stream": True}))
        second.start()
        deadline = time.monotonic() + 10
        while scheduler.queue_length() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        r = client.post("/v1/completions", json=body)
        err = error_of(r, 429)
        assert "1 requests are waiting (max_queue)" in err["message"] and int(r.headers["retry-after"]) >= 1
        assert err["code"] == "rate_limit_exceeded"
        scheduler.limits.max_queue = 5  # room in the queue; now the streams are the limit
        err = error_of(client.post("/v1/completions", json={**body, "stream": True}), 429)
        assert "2 streams are open (max_streams)" in err["message"]
        model.gate.set()
        first.join(10)
        second.join(10)
        assert scheduler.open_streams() == 0 and not scheduler.busy


def metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(name)


def test_metrics(mdm):
    client = TestClient(create_app(mdm, TOK, defaults=CFG))
    other = TestClient(create_app(mdm, TOK, defaults=CFG))  # its own registry: nothing shared
    bodies = [client.post("/v1/completions", json={"prompt": p, "max_tokens": 16}).json() for p in ("ab", "cd")]
    streamed = sse(client.post("/v1/completions", json={"prompt": "a", "stream": True, "max_tokens": 8,
                                                        "stream_options": {"include_usage": True}}))
    client.post("/v1/completions", json={"prompt": "a", "steps": 7})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "remask_requests_total", route="/v1/completions", status="200") == 3
    assert metric(text, "remask_requests_total", route="/v1/completions", status="400") == 1
    tokens = sum(b["usage"]["completion_tokens"] for b in bodies) + streamed[-2]["usage"]["completion_tokens"]
    assert metric(text, "remask_generated_tokens_total") == tokens
    assert metric(text, "remask_forward_passes_total") == 16 + 16 + 8
    assert metric(text, "remask_batches_total") == metric(text, "remask_batch_size_count") == 3
    assert metric(text, "remask_time_to_first_token_seconds_count") == 3
    assert metric(text, "remask_request_latency_seconds_count", route="/v1/completions") == 4
    assert metric(text, "remask_queue_length") == 0 and metric(text, "remask_open_streams") == 0
    assert metric(other.get("/metrics").text, "remask_batches_total") == 0


# ----------------------------------------------------------------------------- fuzz: nothing a client sends is a 5xx

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
WILD = st.integers() | st.floats(allow_nan=True, allow_infinity=True) | JSON


def mostly(usual: st.SearchStrategy, rare: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """``usual`` ``odds`` times out of ``odds + 1``, else ``rare``."""
    return st.sampled_from([usual] * odds + [rare]).flatmap(lambda s: s)


def plausible(name: str) -> st.SearchStrategy:
    """A value of the field's own type, mostly in range, sometimes anything at all."""
    f = SAMPLER_FIELDS[name]
    kind = json_kind(name)
    if f.metadata.get("choices"):
        own = st.sampled_from([*f.metadata["choices"], "nope"])
    else:
        own = {int: st.integers(-1, 12), float: st.floats(-0.5, 2.0), bool: st.booleans(), str: st.text(max_size=5)}[kind]
    return mostly(own | st.none(), WILD)


PROMPTS = st.text(min_size=1, max_size=16) | st.lists(st.text(max_size=6), max_size=3) | st.lists(st.integers(-2, 300), max_size=6)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                           "content": st.text(max_size=16) | JSON}), min_size=1, max_size=3)
OPTIONAL = {**{name: plausible(name) for name in REQUEST_FIELDS},
            "max_tokens": st.integers(-2, 40) | WILD, "n": st.integers(-1, 3) | WILD,
            "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5) | WILD,
            "stream": st.booleans() | WILD, "stream_steps": st.booleans() | WILD,
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | WILD}) | WILD,
            "model": st.sampled_from(["remask", "other"]) | WILD, "logprobs": WILD}
# a few fields at a time, so that many bodies are valid and reach the sampler
SOME = st.lists(st.sampled_from(sorted(OPTIONAL)), max_size=4, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONAL[k] for k in keys}))
BODIES = mostly(st.builds(lambda base, extra: {**base, **extra},
                          st.fixed_dictionaries({"prompt": mostly(PROMPTS, WILD), "messages": mostly(MESSAGES, WILD)}),
                          SOME), JSON, odds=9)


@pytest.fixture(scope="module")
def fuzzed(mdm) -> TestClient:
    server = ServerConfig(max_n=2, max_tokens_limit=32)
    app = create_app(mdm, TOK, defaults=SampleConfig(gen_length=8, steps=8, block_length=4), server=server)
    return TestClient(app, raise_server_exceptions=False)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=BODIES,
       raw=mostly(st.none(), st.binary(max_size=40), odds=9))
def test_no_request_yields_a_5xx(fuzzed: TestClient, path: str, body, raw):
    content = raw if raw is not None else json.dumps(body).encode()
    r = fuzzed.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        error_of(r, r.status_code)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n") and '"server_error"' not in r.text, (body, r.text)
