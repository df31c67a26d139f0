"""remask serve batching: requests that wait share a batch and get exactly what they get alone."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient
from torch import nn

from remask.sampling import SampleConfig, generate
from remask.serve import Engine, Job, ServerConfig, create_app
from test_serve import CFG, TOK, Gated, byte_model, reference, sse


@pytest.fixture(scope="module")
def mdm() -> nn.Module:
    return byte_model()


class Shapes(Gated):
    """Gated, and it records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__(inner)
        self.sizes: list[int] = []

    def forward(self, idx, attn_mask=None, **kw):
        self.sizes.append(idx.shape[0])
        return super().forward(idx, attn_mask=attn_mask, **kw)


def wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def post_all(client: TestClient, requests: list[tuple[str, dict]]) -> list[Any]:
    """Send each request from its own thread, in order (each queued before the next is sent)."""
    results: list[Any] = [None] * len(requests)
    scheduler = client.app.state.scheduler
    threads = []
    for i, (path, body) in enumerate(requests):
        queued = scheduler.queue_length()
        threads.append(threading.Thread(target=lambda i=i, p=path, b=body: results.__setitem__(i, client.post(p, json=b))))
        threads[-1].start()
        wait_for(lambda q=queued, i=i: scheduler.queue_length() > q or results[i] is not None)
    return [results, threads]


def text_of(response, chat: bool = False) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        chunks = [c for c in sse(response)[:-1] if c["choices"]]
        key = (lambda c: c["delta"].get("content", "")) if chat else (lambda c: c["text"])
        return "".join(key(c["choices"][0]) for c in chunks)
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if chat else choice["text"]


def test_waiting_requests_share_a_batch_and_each_gets_what_it_gets_alone(mdm):
    model = Shapes(mdm)
    prompts = ["a", "The quick brown fox", "xy", "0123456789", "hello"]
    same = [("/v1/completions", {"prompt": p, "max_tokens": 12, "stream": i % 2 == 1}) for i, p in enumerate(prompts)]
    chat = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16})
    other = ("/v1/completions", {"prompt": "zz", "max_tokens": 16, "steps": 8})  # other settings: its own batch
    noisy = ("/v1/completions", {"prompt": "q", "max_tokens": 16, "temperature": 0.9, "seed": 4})  # draws noise: alone
    with TestClient(create_app(model, TOK, defaults=CFG)) as client:
        hold = threading.Thread(target=lambda: client.post("/v1/completions", json={"prompt": "hold", "max_tokens": 8}))
        hold.start()
        assert model.entered.wait(10)  # the model is busy: what comes now waits
        requests = [same[0], other, same[1], noisy, same[2], chat, same[3], same[4]]
        results, threads = post_all(client, requests)
        assert client.app.state.scheduler.queue_length() == len(requests)
        model.gate.set()
        for t in [hold, *threads]:
            t.join(10)
        assert all(r.status_code == 200 for r in results)
        # hold alone (8 steps); the five same-settings requests and chat (gen 16, 16 steps, blocks of 8)?
        # no: chat's max_tokens is 16 and theirs 12 -> 16 both (blocks of 8), so chat joins them
        assert model.sizes == [1] * 8 + [6] * 16 + [1] * 8 + [1] * 16, model.sizes
        assert model.overlaps == 0
    alone = TestClient(create_app(mdm, TOK, defaults=CFG))
    for (path, body), r in zip(requests, results):
        expected = alone.post(path, json={**body, "stream": False})
        assert text_of(r, chat="chat" in path) == text_of(expected, chat="chat" in path), body
    ids = TOK.encode(prompts[1])
    assert text_of(results[2]) == reference(mdm, ids, SampleConfig(gen_length=16, steps=16, block_length=8))[0][:12]


def test_batch_rows_are_capped_and_the_rest_wait_in_order(mdm):
    model = Shapes(mdm)
    with TestClient(create_app(model, TOK, defaults=CFG, server=ServerConfig(max_batch_size=3))) as client:
        hold = threading.Thread(target=lambda: client.post("/v1/completions", json={"prompt": "hold", "max_tokens": 8}))
        hold.start()
        assert model.entered.wait(10)
        results, threads = post_all(client, [("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 8})] +
                                    [("/v1/completions", {"prompt": c, "max_tokens": 8}) for c in "cdef"])
        model.gate.set()
        for t in [hold, *threads]:
            t.join(10)
        assert [r.status_code for r in results] == [200] * 5
        assert model.sizes == [1] * 8 + [3] * 8 + [3] * 8, model.sizes  # [a, b] + c, then d, e, f


class Listener:
    """An engine sink: collects a job's pieces and result; leaves after ``leave_after`` pieces."""

    def __init__(self, job: Job, leave_after: int | None = None) -> None:
        self.job, self.leave_after, self.pieces, self.result = job, leave_after, [], None

    @property
    def live(self) -> bool:
        return self.leave_after is None or len(self.pieces) < self.leave_after

    def piece(self, row: int, text: str) -> None:
        self.pieces.append((row, text))

    def step(self, payload: dict) -> None:
        pass

    def done(self, result) -> None:
        self.result = result


def test_a_client_that_leaves_is_ignored_and_a_batch_nobody_wants_stops(mdm):
    engine = Engine(mdm, TOK, CFG)
    body = {"max_tokens": 16, "stream": True}
    stays = Listener(engine.job(body, [TOK.encode("Once upon")]))
    leaves = Listener(engine.job(body, [TOK.encode("x")]), leave_after=1)
    assert engine.run([leaves, stays]) == 16  # the batch went on for the one that stayed
    assert leaves.result is None and len(leaves.pieces) == 1
    assert "".join(t for _, t in stays.pieces) == stays.result.texts[0] == reference(mdm, TOK.encode("Once upon"))[0]
    both = [Listener(engine.job(body, [TOK.encode(p)]), leave_after=1) for p in ("Once upon", "x")]
    assert engine.run(both) == 8  # the first text is final after block 1; then nobody is left: it stops


def test_n_completions_are_rows_of_one_batch(mdm):
    client = TestClient(create_app(mdm, TOK, defaults=CFG, server=ServerConfig(max_n=3)))
    body = {"prompt": ["ab", "c"], "max_tokens": 16, "n": 3, "temperature": 0.8, "seed": 5}
    got = client.post("/v1/completions", json=body).json()
    rows = [TOK.encode("ab")] * 3 + [TOK.encode("c")] * 3
    out = generate(mdm, rows, SampleConfig(gen_length=16, steps=16, block_length=8, temperature=0.8, seed=5),
                   mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    from remask.sampling import trim_eos

    expected = [TOK.decode(trim_eos(t, TOK.eos_id, TOK.eot_id), skip_special_tokens=True) for t in out.tokens]
    assert [c["text"] for c in got["choices"]] == expected and [c["index"] for c in got["choices"]] == list(range(6))
    assert got["usage"]["prompt_tokens"] == 3  # each prompt counted once
    r = client.post("/v1/completions", json={**body, "n": 4})
    assert r.status_code == 400 and "'n' must be in 1..3 (max_n)" in r.json()["error"]["message"]


def steps_of(response) -> tuple[list[dict], list[dict]]:
    """(the ``step`` events, the unnamed chunks) of a stream with stream_steps."""
    steps, chunks = [], []
    for event in response.text.split("\n\n"):
        if event.startswith("event: step\n"):
            steps.append(json.loads(event.split("\n", 1)[1][6:]))
        elif event.startswith("data: {"):
            chunks.append(json.loads(event[6:]))
    return steps, chunks


def test_stream_steps_sends_every_denoising_step(mdm):
    client = TestClient(create_app(mdm, TOK, defaults=CFG))
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 16, "stream": True, "stream_steps": True,
                                             "stream_options": {"include_usage": True}})
    steps, chunks = steps_of(r)
    assert [s["step"] for s in steps] == list(range(16)) and [s["block"] for s in steps] == [0] * 8 + [1] * 8
    assert all(len(s["commits"]) == 1 and s["length"] == 16 and s["remasked"] == [] for s in steps)
    canvas = {}
    for s in steps:
        for col, token, text, confidence in s["commits"]:
            assert col not in canvas and 0 <= confidence <= 1 and text == TOK.decode([token])
            canvas[col] = token
    out = generate(mdm, [TOK.encode("Hi")], CFG, mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    assert [canvas[c] for c in range(16)] == out.tokens[0].tolist()
    assert chunks[-1]["usage"]["forward_passes"] == steps[-1]["n_forward"] == 16
    r = client.post("/v1/completions", json={"prompt": "Hi", "stream_steps": True})
    assert r.status_code == 400 and "'stream_steps' needs 'stream': true" in r.json()["error"]["message"]


def test_a_free_model_waits_briefly_for_a_batch_as_large_as_its_last(mdm):
    model = Shapes(mdm)
    model.gate.set()
    with TestClient(create_app(model, TOK, defaults=CFG, server=ServerConfig(batch_wait=5.0))) as client:
        start = time.monotonic()
        for _ in range(2):  # a lone client: its last batch had 1 row, so it never waits
            assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 8}).status_code == 200
        assert time.monotonic() - start < 4
        model.sizes.clear()
        threads = [threading.Thread(target=client.post, args=("/v1/completions",),
                                    kwargs={"json": {"prompt": p, "max_tokens": 8}}) for p in ("a", "bc", "def")]
        client.app.state.scheduler._last_rows = 3  # as if its last batch had held three requests
        for t in threads:
            t.start()
            time.sleep(0.05)  # they arrive apart, yet share one batch
        for t in threads:
            t.join(10)
        assert model.sizes == [3] * 8
