"""remask serve over a real socket: the official openai client against uvicorn on 127.0.0.1, and 32 streams at once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
pytest.importorskip("uvicorn")
import httpx
import openai
import uvicorn
from torch import nn

from remask.chat import prompt_ids, trim_answer
from remask.sampling import SampleConfig, generate
from remask.serve import ServerConfig, create_app
from test_serve import CFG, TOK, byte_model, reference


@contextmanager
def live(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background thread -> its /v1 base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < end and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def mdm() -> nn.Module:
    return byte_model()


@pytest.fixture(scope="module")
def url(mdm) -> Iterator[str]:
    with live(create_app(mdm, TOK, defaults=CFG, model_name="tiny")) as base:
        yield base


def chat_reference(model: nn.Module, text: str) -> str:
    out = generate(model, [prompt_ids(TOK, text)], CFG, mask_id=TOK.mask_id, eos_id=TOK.eos_id, eot_id=TOK.eot_id)
    return TOK.decode(trim_answer(out.tokens[0].tolist(), TOK)[0], skip_special_tokens=True)


def test_openai_client_completions_and_chat(url, mdm):
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    expected = reference(mdm, TOK.encode("def f(x):"))[0]
    done = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=16, temperature=0)
    assert done.choices[0].text == expected and done.usage.prompt_tokens == len(TOK.encode("def f(x):"))
    stream = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected
    messages = [{"role": "user", "content": "Hi there"}]
    answer = chat_reference(mdm, "Hi there")
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16)
    assert chat.choices[0].message.content == answer and chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="a", max_tokens=8)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="steps 7 must be a multiple"):
        client.completions.create(model="tiny", prompt="a", max_tokens=16, extra_body={"steps": 7})


def test_openai_client_with_an_api_key(mdm):
    with live(create_app(mdm, TOK, defaults=CFG, model_name="tiny", server=ServerConfig(api_key="s3cret"))) as base:
        good = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0)
        expected = reference(mdm, TOK.encode("ab"), SampleConfig(gen_length=8, steps=8, block_length=8))[0]
        assert good.completions.create(model="tiny", prompt="ab", max_tokens=8).choices[0].text == expected
        stream = good.completions.create(model="tiny", prompt="ab", max_tokens=8, stream=True)
        assert "".join(c.choices[0].text for c in stream) == expected
        bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
        for call in (lambda: bad.completions.create(model="tiny", prompt="ab", max_tokens=8),
                     lambda: bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                         stream=True)):
            with pytest.raises(openai.AuthenticationError) as e:
                call()
            assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


def test_32_concurrent_streaming_clients_all_complete_correctly(url, mdm):
    prompts = ["Once upon a time", "x", "The quick brown fox jumps", "def f(x):"]
    expected = {p: reference(mdm, TOK.encode(p))[0] for p in prompts}
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)

    async def one(prompt: str) -> str:
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=16, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def all_of_them() -> list[str]:
        try:
            return await asyncio.gather(*(one(prompts[i % 4]) for i in range(32)))
        finally:
            await client.close()

    texts = asyncio.run(all_of_them())
    assert texts == [expected[prompts[i % 4]] for i in range(32)]
    metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert "remask_batch_size_bucket" in metrics
    batched = [line for line in metrics.splitlines() if line.startswith('remask_batch_size_bucket{le="1.0"}')]
    batches = [line for line in metrics.splitlines() if line.startswith("remask_batch_size_count")]
    assert float(batched[0].split()[-1]) < float(batches[0].split()[-1])  # some batches held several requests
