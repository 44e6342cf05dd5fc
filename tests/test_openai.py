"""The official `openai` Python client against a real `reprise serve`.

The fixture starts the release binary (target/release/reprise, or $REPRISE_BIN)
on a free port with the default model and stops it after the module.
"""

import json
import os
import pathlib
import re
import subprocess
import threading

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden" / "smollm2_golden_public.json"


def _golden_case(case_id):
    cases = json.loads(GOLDEN.read_text())["cases"]
    return next(c for c in cases if c["id"] == case_id)


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("REPRISE_BIN", str(ROOT / "target" / "release" / "reprise"))
    assert os.path.isfile(binary), f"{binary} is missing; run cargo build --release first"
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--api-key", "test-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    log = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    base = None
    try:
        for line in proc.stdout:
            m = re.search(r" on (http://\S+)", line)
            if m:
                base = m.group(1)
                break
        assert base, "reprise printed no ready line:\n" + "".join(log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="test-key", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def test_wrong_key_is_rejected(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_completion_is_greedy_golden(client, model):
    case = _golden_case("p01_fact_germany")
    r = client.completions.create(model=model, prompt=case["prompt"], max_tokens=48, temperature=0)
    assert r.choices[0].text == case["greedy_text"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == case["n_prompt_tokens"]
    assert r.usage.completion_tokens == 48
    assert r.usage.total_tokens == 53


def test_chat_is_greedy_golden(client, model):
    case = _golden_case("p07_multilingual_multiturn")
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=case["messages"], max_tokens=48, temperature=0
    )
    assert raw.headers["x-reprise-worker"] in ("0", "1")
    r = raw.parse()
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == case["greedy_text"]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == case["n_prompt_tokens"]
    # Every full block but the one holding the last prompt token (blocks of 16).
    full = (case["n_prompt_tokens"] - 1) // 16 * 16
    first = r.usage.prompt_tokens_details.cached_tokens
    assert first % 16 == 0 and first <= full
    # The same conversation again finds its whole prefix on the worker that holds it.
    again = client.chat.completions.create(
        model=model, messages=case["messages"], max_tokens=1, temperature=0
    )
    assert again.usage.prompt_tokens_details.cached_tokens == full


def test_chat_streaming_with_usage(client, model):
    case = _golden_case("p05_shared_prefix_recipes_bread")
    stream = client.chat.completions.create(
        model=model,
        messages=case["messages"],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == case["greedy_text"]
    assert finish in ("stop", "length")
    assert usage is not None
    assert usage.prompt_tokens == case["n_prompt_tokens"]
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_streaming_with_usage(client, model):
    stream = client.completions.create(
        model=model,
        prompt="The capital of Germany is",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == _golden_case("p01_fact_germany")["greedy_text"][: len(text)]
    assert len(text) > 0
    assert chunks[-1].usage.completion_tokens == 12


def test_n_two(client, model):
    r = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=3, n=2, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.text for c in r.choices)
    assert r.usage.completion_tokens == 16
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0, n=2
    )
    assert len(chat.choices) == 2
    assert chat.choices[0].message.content == chat.choices[1].message.content


def test_bad_request_is_an_openai_error(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="hi", max_tokens=-1)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
