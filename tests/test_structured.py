"""Structured outputs, tool calls and vLLM's sampling parameters through the
official `openai` client, against a real `reprise serve` with the default model."""

import json
import re

import urllib.request

import openai
import pytest

from test_openai import client, model, server  # noqa: F401 (fixtures)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "tags": {
            "type": "array",
            "items": {"type": "string", "enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def valid_person(v):
    """SCHEMA, checked by hand (no jsonschema package needed)."""
    return (
        isinstance(v, dict)
        and set(v) == {"name", "age", "tags"}
        and isinstance(v["name"], str)
        and 1 <= len(v["name"]) <= 12
        and isinstance(v["age"], int)
        and 18 <= v["age"] <= 99
        and isinstance(v["tags"], list)
        and 1 <= len(v["tags"]) <= 3
        and all(t in ("red", "green", "blue") for t in v["tags"])
    )


def valid_weather_args(text):
    v = json.loads(text)
    return (
        set(v) == {"city", "unit"}
        and isinstance(v["city"], str)
        and len(v["city"]) <= 24
        and v["unit"] in ("celsius", "fahrenheit")
    )


def chat(client, model, content, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kw
    )


def test_json_schema_outputs_are_valid(client, model):
    for seed in range(5):
        r = chat(
            client,
            model,
            "Describe a person as JSON.",
            max_tokens=120,
            temperature=0.8,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
        )
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        assert valid_person(json.loads(text)), text


def test_json_object_choice_and_regex(client, model):
    r = chat(client, model, "Give me a JSON object.", max_tokens=80, temperature=0,
             response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    choices = ["positive", "negative", "neutral"]
    r = chat(client, model, "Is 'I love it' positive or negative?", max_tokens=10,
             extra_body={"structured_outputs": {"choice": choices}})
    assert r.choices[0].message.content in choices
    rx = r"[A-Z][a-z]{2,8}-[0-9]{3}"
    r = client.completions.create(model=model, prompt="A product code:", max_tokens=20,
                                  extra_body={"guided_regex": rx})
    assert re.fullmatch(rx, r.choices[0].text), r.choices[0].text


def test_invalid_schema_is_a_400(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, "x", max_tokens=5,
             response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert "response_format" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        chat(client, model, "x", max_tokens=5, extra_body={"guided_regex": "(unclosed"})


def test_named_and_required_tool_choices(client, model):
    r = chat(client, model, "What is the weather in Paris?", max_tokens=60, temperature=0,
             tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert valid_weather_args(calls[0].function.arguments), calls[0].function.arguments
    r = chat(client, model, "What is the weather in Oslo?", max_tokens=120, temperature=0,
             tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].id.startswith("chatcmpl-tool-")
    if calls[0].function.name == "get_weather":
        assert valid_weather_args(calls[0].function.arguments)
    else:
        assert calls[0].function.name == "get_time"
        assert isinstance(json.loads(calls[0].function.arguments), dict)
    # The call goes back to the model as a tool message.
    r = client.chat.completions.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "12 degrees"},
    ], tools=[WEATHER, CLOCK])
    assert r.choices[0].message.content is not None


def test_streamed_tool_call_deltas_assemble(client, model):
    for choice in [{"type": "function", "function": {"name": "get_weather"}}, "required"]:
        stream = chat(client, model, "Weather in Rome?", max_tokens=120, temperature=0, stream=True,
                      tools=[WEATHER], tool_choice=choice)
        calls, finish = {}, None
        for chunk in stream:
            for c in chunk.choices:
                for d in c.delta.tool_calls or []:
                    slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
                    if d.function.name:
                        slot["name"] = d.function.name
                    slot["arguments"] += d.function.arguments or ""
                finish = c.finish_reason or finish
        assert list(calls) == [0], calls
        assert calls[0]["name"] == "get_weather"
        assert valid_weather_args(calls[0]["arguments"]), calls
        assert finish == ("tool_calls" if choice == "required" else "stop")


def test_sampling_parameters(server, client, model):
    prompt = "one two one two one two one two one two"
    base = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    pen = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                    frequency_penalty=1.5, presence_penalty=1.0)
    assert base.choices[0].text != pen.choices[0].text, base.choices[0].text
    rep = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                    extra_body={"repetition_penalty": 1.8})
    assert base.choices[0].text != rep.choices[0].text
    # min_tokens holds EOS back: a reply that ends at once runs on to min_tokens.
    short = chat(client, model, "Reply with the single word: yes", max_tokens=100, temperature=0)
    n = short.usage.completion_tokens
    assert short.choices[0].finish_reason == "stop" and n < 90, short
    held = chat(client, model, "Reply with the single word: yes", max_tokens=n + 40, temperature=0,
                extra_body={"min_tokens": n + 10})
    assert held.usage.completion_tokens >= n + 10
    # logit_bias -100 bans the greedy token.
    first = client.completions.create(model=model, prompt="The capital of France is", max_tokens=1,
                                      temperature=0, logprobs=1)
    tok = first.choices[0].logprobs.tokens[0]
    req = urllib.request.Request(
        server + "/tokenize",
        data=json.dumps({"prompt": tok, "add_special_tokens": False}).encode(),
        headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        ids = json.loads(resp.read())["tokens"]
    assert len(ids) == 1
    banned = client.completions.create(model=model, prompt="The capital of France is", max_tokens=1,
                                       temperature=0, logit_bias={str(ids[0]): -100})
    assert banned.choices[0].text != tok
