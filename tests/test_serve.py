"""remask serve: OpenAI-shaped answers equal the library's samplers; streams, errors, concurrency."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # FastAPI's TestClient
import torch
from fastapi.testclient import TestClient
from torch import nn

from conftest import tiny_model_config
from remask.chat import prompt_ids, trim_answer
from remask.checkpoint import save_checkpoint
from remask.commands import main
from remask.config import RunConfig
from remask.data.tokenizer import ByteTokenizer
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling import SampleConfig, generate, trim_eos
from remask.sampling.ar import ARSampleConfig, ar_generate
from remask.serve import StopCut, create_app, serve

TOK = ByteTokenizer()
CFG = SampleConfig(gen_length=16, steps=16, block_length=8)


def byte_model(causal: bool = False, seed: int = 0) -> nn.Module:
    cfg = tiny_model_config(vocab_size=TOK.vocab_size, mask_token_id=TOK.mask_id, eos_token_id=TOK.eos_id,
                            max_seq_len=96, causal=causal)
    return build_model(cfg, seed=seed).eval()


@pytest.fixture(scope="module")
def mdm() -> nn.Module:
    return byte_model()


@pytest.fixture(scope="module")
def client(mdm: nn.Module) -> TestClient:
    return TestClient(create_app(mdm, TOK, defaults=CFG, model_name="tiny"))


def reference(model: nn.Module, ids: list[int], cfg: SampleConfig = CFG) -> tuple[str, int]:
    out = generate(model, [ids], cfg, mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    return TOK.decode(trim_eos(out.tokens[0], TOK.eos_id, TOK.eot_id), skip_special_tokens=True), out.n_forward


def sse(response) -> list[dict | str]:
    """The ``data:`` payloads of an event stream, JSON-decoded except ``[DONE]``."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_health_and_models(client: TestClient):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "busy": False}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["max_model_len"], m["sampler"]) for m in models["data"]] == [("tiny", 96, "llada")]


def test_completion_equals_generate(client: TestClient, mdm: nn.Module):
    prompt = "def f(x):"
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    text, n_forward = reference(mdm, TOK.encode(prompt))
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["text"] == text and choice["index"] == 0
    u = body["usage"]
    assert u["prompt_tokens"] == len(TOK.encode(prompt)) and u["forward_passes"] == n_forward
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the answer is all 16 columns unless EOS/EOT ended it
    assert (choice["finish_reason"] == "length") == (u["completion_tokens"] == 16)


def test_sampler_fields_reach_the_config(client: TestClient, mdm: nn.Module):
    cfg = SampleConfig(gen_length=16, steps=8, block_length=4, remasking="margin", temperature=0.7, seed=3)
    r = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 16, "steps": 8, "block_length": 4,
                                             "remasking": "margin", "temperature": 0.7, "seed": 3})
    assert r.json()["choices"][0]["text"] == reference(mdm, TOK.encode("ab"), cfg)[0]
    assert r.json()["seed"] == 3


def test_max_tokens_rounds_up_to_whole_blocks_and_cuts(client: TestClient, mdm: nn.Module):
    # 5 tokens with blocks of 8: one block of 8 (8 steps, the server's 1 step per token), cut at 5
    r = client.post("/v1/completions", json={"prompt": "xyz", "max_tokens": 5})
    out = generate(mdm, [TOK.encode("xyz")], SampleConfig(gen_length=8, steps=8, block_length=8),
                   mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    ids = trim_eos(out.tokens[0, :5], TOK.eos_id, TOK.eot_id)
    assert r.json()["choices"][0]["text"] == TOK.decode(ids, skip_special_tokens=True)
    assert r.json()["usage"]["completion_tokens"] == len(ids) <= 5


def test_batch_equals_one_by_one(client: TestClient):
    prompts = ["The quick brown", "fn"]
    batch = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 16}).json()
    alone = [client.post("/v1/completions", json={"prompt": p, "max_tokens": 16}).json() for p in prompts]
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert [c["text"] for c in batch["choices"]] == [a["choices"][0]["text"] for a in alone]
    assert batch["usage"]["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone)


def test_chat_renders_the_checkpoint_template(client: TestClient, mdm: nn.Module):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 16}).json()
    ids = prompt_ids(TOK, "Hi there", system="Be brief.")  # what `generate --chat` samples from
    out = generate(mdm, [ids], CFG, mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    expected = TOK.decode(trim_answer(out.tokens[0].tolist(), TOK)[0], skip_special_tokens=True)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["usage"]["prompt_tokens"] == len(ids)
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             messages[1]]
    assert client.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 16}).json()["choices"] == \
        body["choices"]


def test_stream_deltas_add_up_to_the_completion(client: TestClient):
    req = {"prompt": ["Once upon", "a"], "max_tokens": 16}
    whole = client.post("/v1/completions", json=req).json()
    events = sse(client.post("/v1/completions", json={**req, "stream": True,
                                                      "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "text_completion" for c in chunks)
    for row, expected in enumerate(whole["choices"]):
        mine = [ch for c in chunks for ch in c["choices"] if ch["index"] == row]
        assert "".join(ch["text"] for ch in mine) == expected["text"]
        assert [ch["finish_reason"] for ch in mine if ch["finish_reason"]] == [expected["finish_reason"]]
        assert mine[-1]["finish_reason"] is not None  # the finish chunk comes last
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_chat_stream_sends_content_deltas(client: TestClient):
    req = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    whole = client.post("/v1/chat/completions", json=req).json()["choices"][0]
    events = sse(client.post("/v1/chat/completions", json={**req, "stream": True}))
    assert events[-1] == "[DONE]"
    deltas = [c["choices"][0] for c in events[:-1]]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in events[:-1])
    assert "".join(d["delta"].get("content", "") for d in deltas) == whole["message"]["content"]
    assert deltas[-1] == {"index": 0, "delta": {}, "finish_reason": whole["finish_reason"]}


def test_stop_strings_cut_the_answer(client: TestClient):
    full = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16}).json()["choices"][0]["text"]
    assert len(full) >= 4, "the tiny model's answer is too short to cut"
    stop = full[2:4]
    cut = full[:full.find(stop)]
    r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "stop": [stop, "\x00never"]})
    assert r.json()["choices"][0] | {"logprobs": None} == {"index": 0, "text": cut, "finish_reason": "stop",
                                                           "logprobs": None}
    events = sse(client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "stop": stop,
                                                      "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == cut


class Scripted(nn.Module):
    """Answer column j predicts ``target[j]``, more surely to the right: each block fills right to left,
    so the stable prefix grows a whole block at a time."""

    def __init__(self, P: int, target: list[int]) -> None:
        super().__init__()
        self.table = torch.zeros(P + len(target), TOK.vocab_size)
        for j, t in enumerate(target):
            self.table[P + j, t] = 5.0 + 0.1 * j

    def forward(self, idx, attn_mask=None):
        return self.table[: idx.shape[1]].expand(idx.shape[0], -1, -1)


def test_eos_ends_the_answer_and_a_stop_string_ends_the_stream_early():
    answer = "añb€"  # multi-byte characters straddle the blocks of 4
    target = [*answer.encode(), TOK.eot_id] + [TOK.eos_id] * 8  # 16 columns
    client = TestClient(create_app(Scripted(1, target), TOK, defaults=SampleConfig(gen_length=16, steps=16,
                                                                                    block_length=4)))
    body = client.post("/v1/completions", json={"prompt": "a"}).json()
    assert body["choices"][0]["text"] == answer and body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(answer.encode())
    assert usage["forward_passes"] + usage["forward_passes_saved"] == 16 and usage["forward_passes_saved"] > 0
    req = {"prompt": "a", "stream": True, "stream_options": {"include_usage": True}}
    events = sse(client.post("/v1/completions", json=req))
    texts = [c["choices"][0]["text"] for c in events[:-2]]
    assert "".join(texts) == answer and not any("\ufffd" in t for t in texts)
    assert events[-2]["usage"] == usage
    events = sse(client.post("/v1/completions", json={**req, "stop": "b"}))
    assert "".join(c["choices"][0]["text"] for c in events[:-2]) == "añ"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"]["forward_passes"] == 4  # "b" closes the first block: the rest is skipped


@pytest.mark.parametrize("stops, pieces, expected", [
    (["END"], ["abcE", "N", "Dxyz"], ["abc", "", ""]),  # "E", "EN" held back, then cut
    (["END"], ["abcE", "Nx"], ["abc", "ENx"]),  # not a stop after all: released
    (["ab", "b"], ["xab"], ["x"]),  # the earliest stop wins
])
def test_stop_cut_holds_back_possible_starts(stops, pieces, expected):
    cut = StopCut(stops)
    assert [cut.feed(p) for p in pieces] == expected


def test_ar_checkpoint_is_served_with_ar_decoding(tmp_path, monkeypatch):
    model = byte_model(causal=True, seed=1)
    save_checkpoint(tmp_path / "run" / "checkpoint", model, RunConfig(model=model.cfg), TOK)
    started = {}
    monkeypatch.setitem(sys.modules, "uvicorn", SimpleNamespace(run=lambda app, **kw: started.update(app=app, **kw)))
    serve(tmp_path / "run", port=8123, defaults=CFG, device="cpu", random_seed=False)
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    client = TestClient(started["app"])
    assert client.get("/v1/models").json()["data"][0] | {"created": 0} == {
        "id": "run", "object": "model", "created": 0, "owned_by": "remask", "max_model_len": 96, "sampler": "ar"}
    ids = TOK.encode("hello")
    out = ar_generate(model, [ids], ARSampleConfig(gen_length=12), eos_id=TOK.eos_id, mask_id=TOK.mask_id)
    expected = TOK.decode(trim_eos(out.tokens[0], TOK.eos_id, TOK.eot_id), skip_special_tokens=True)
    body = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 12}).json()
    assert body["choices"][0]["text"] == expected and body["usage"]["forward_passes"] == out.n_forward
    events = sse(client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 12, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == expected
    assert sum(bool(c["choices"][0]["text"]) for c in events[:-1]) > 1  # token by token, not in one piece
    r = client.post("/v1/completions", json={"prompt": "hello", "steps": 4})
    assert r.status_code == 400 and "autoregressive" in r.json()["error"]["message"]


@pytest.mark.parametrize("path, body, message", [
    ("/v1/completions", {"prompt": "a", "remasking": "nope"}, "remasking 'nope' is not a known rule"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens must be positive, got 0"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 200}, "exceeds the model context of 96 tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 16, "steps": 7}, "steps 7 must be a multiple"),
    ("/v1/completions", {"prompt": "a", "temperature": "hot"}, "'temperature' must be a number"),
    ("/v1/completions", {"prompt": ""}, "prompt 0 is empty"),
    ("/v1/completions", {"prompt": [1, 999]}, "outside the vocabulary"),
    ("/v1/completions", {"max_tokens": 4}, "'prompt' is required"),
    ("/v1/completions", {"prompt": "a", "n": 2}, "'n' must be 1"),
    ("/v1/chat/completions", {"max_tokens": 4}, "'messages' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, "messages[0] must be an object"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|eot_id|>"}]}, "special token"),
])
def test_bad_requests_get_a_one_line_error(client: TestClient, path, body, message):
    r = client.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert message in err["message"] and "\n" not in err["message"] and err["type"] == "invalid_request_error"


def test_bad_json_and_unknown_paths(client: TestClient):
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json=["a list"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()


class Gated(nn.Module):
    """The tiny model, but every forward pass waits until the test opens the gate."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg
        self.entered, self.gate, self.running, self.overlaps = threading.Event(), threading.Event(), 0, 0

    def forward(self, idx, attn_mask=None, **kw):
        self.running += 1
        self.overlaps += self.running > 1
        self.entered.set()
        try:
            assert self.gate.wait(10)
            return self.inner(idx, attn_mask=attn_mask, **kw)
        finally:
            self.running -= 1


@pytest.mark.parametrize("stream", [False, True])
def test_health_answers_while_generating_and_generation_is_serialised(mdm: nn.Module, stream: bool):
    model = Gated(mdm)
    with TestClient(create_app(model, TOK, defaults=CFG)) as client:
        req = {"prompt": "hi", "max_tokens": 8, "stream": stream}
        results = []
        workers = [threading.Thread(target=lambda: results.append(client.post("/v1/completions", json=req)))
                   for _ in range(2)]
        for w in workers:
            w.start()
        assert model.entered.wait(10)
        assert client.get("/health").json()["busy"] is True  # the event loop is free mid-generation
        model.gate.set()
        for w in workers:
            w.join(10)
        assert [r.status_code for r in results] == [200, 200] and model.overlaps == 0
        assert client.get("/health").json()["busy"] is False


def test_a_client_that_leaves_mid_stream_frees_the_model(mdm: nn.Module):
    app = create_app(mdm, TOK, defaults=CFG)
    body = json.dumps({"prompt": "hi", "max_tokens": 16, "stream": True}).encode()
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])
            raise OSError("client went away")  # what the server reports for a closed connection

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    health = []

    async def health_send(message):
        if message["type"] == "http.response.body":
            health.append(json.loads(message["body"]))

    async def leave_then_ask():
        with pytest.raises(Exception):  # noqa: B017 (starlette's ClientDisconnect, whatever wraps it)
            await app(scope, receive, send)
        # same event loop, the abandoned stream not yet finalised: the model must already be free
        await app({**scope, "method": "GET", "path": "/health", "raw_path": b"/health"}, receive, health_send)

    asyncio.run(leave_then_ask())
    assert len(sent) == 1 and sent[0].startswith(b"data: ")
    assert health == [{"status": "ok", "model": "remask", "busy": False}]
    assert TestClient(app).post("/v1/completions", json={"prompt": "hi", "max_tokens": 8}).status_code == 200


def test_cli_help_and_missing_extra(monkeypatch, capsys, tmp_path):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--host" in out and "--block-length" in out
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    with pytest.raises(RemaskError, match=r"pip install 'remask\[serve\]'"):
        create_app(byte_model(), TOK)
    assert main(["serve", "--ckpt", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "remask: error: remask serve needs the serve extra: pip install 'remask[serve]'\n"
