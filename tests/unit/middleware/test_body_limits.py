"""chains.middleware.body_limits: bounded bodies; on the model routes only JSON, valid UTF-8, not too deep; the
depth check linear."""

from __future__ import annotations

import json
import random
import time

import pytest

from chains.middleware.body_limits import RequestLimits, json_deeper_than, lone_surrogate_at
from tests.support.asgi import Client, Inner, call, scope

JSON = {"content-type": "application/json"}


def limits(inner: Inner, max_body_bytes: int = 1000, max_json_depth: int = 4) -> RequestLimits:
    return RequestLimits(inner, max_body_bytes=max_body_bytes, max_json_depth=max_json_depth)


async def test_a_body_within_the_limits_reaches_the_route_whole_in_one_message() -> None:
    inner = Inner()
    answer = await call(limits(inner), scope(headers=JSON), Client(b'{"message":', b' "hi"}'))
    assert answer.status == 200 and answer.body == b'ok:{"message": "hi"}'
    assert inner.calls[0]["body"] == b'{"message": "hi"}'


async def test_the_route_then_reads_the_real_channel_so_a_disconnect_reaches_it() -> None:
    seen = []

    async def route(request, receive, send):  # type: ignore[no-untyped-def]
        seen.append(await receive())
        seen.append(await receive())

    client = Client(b'{"message": "hi"}')
    client.leave.set()
    await call(limits(Inner()).__class__(route, max_body_bytes=1000, max_json_depth=4), scope(headers=JSON), client)
    assert seen == [{"type": "http.request", "body": b'{"message": "hi"}', "more_body": False},
                    {"type": "http.disconnect"}]


@pytest.mark.parametrize("length", ["1001", "99999999999", "12a", "-1"])
async def test_a_declared_length_over_the_limit_or_not_a_number_is_refused_before_reading(length: str) -> None:
    inner, client = Inner(), Client(b"x")
    answer = await call(limits(inner), scope(headers={**JSON, "content-length": length}), client)
    assert answer.status == 413 and client.reads == 0 and not inner.called
    assert answer.json() == {"error": "the body is larger than MAX_BODY_BYTES=1000", "type": "body_too_large"}


async def test_a_body_that_grows_past_the_limit_is_refused_as_soon_as_it_does() -> None:
    inner, client = Inner(), Client(b"x" * 600, b"x" * 600, b"x" * 600)
    answer = await call(limits(inner), scope(path="/single-turn/invoke", headers=JSON), client)
    assert answer.status == 413 and answer.json()["type"] == "body_too_large"
    assert client.reads == 2 and not inner.called  # the third piece is never read


async def test_a_client_that_leaves_mid_body_gets_nothing() -> None:
    client = Client()
    client.chunks = []
    client.leave.set()
    inner = Inner()
    answer = await call(limits(inner), scope(headers=JSON), client)
    assert answer.messages == [] and not inner.called


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/x-www-form-urlencoded", "application/jsonx"])
async def test_model_routes_take_only_json(content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = await call(limits(Inner()), scope(path="/conversation/stream", headers=headers), Client(b"{}"))
    assert answer.status == 415 and answer.json() == {
        "error": f"Content-Type must be application/json (got {content_type or 'none'})",
        "type": "unsupported_media_type"}


async def test_json_content_type_parameters_and_case_are_accepted() -> None:
    answer = await call(limits(Inner()), scope(headers={"content-type": "Application/JSON; charset=utf-8"}),
                        Client(b"{}"))
    assert answer.status == 200


async def test_other_routes_keep_their_own_content_types() -> None:
    answer = await call(limits(Inner()), scope(path="/sign-in", headers={"content-type": "text/plain"}),
                        Client(b"key=\xff"))
    assert answer.status == 200


async def test_invalid_utf8_is_refused_naming_the_byte() -> None:
    answer = await call(limits(Inner()), scope(headers=JSON), Client(b'{"message": "\xe4\xbd"}'))
    assert answer.status == 400
    assert answer.json() == {"error": "the body is not valid UTF-8 (byte 13)", "type": "invalid_body"}


async def test_a_body_nested_deeper_than_the_limit_is_refused_and_one_at_the_limit_is_not() -> None:
    inner = Inner()
    at_limit = await call(limits(inner), scope(headers=JSON), Client(b'{"a": [[{"b": 1}]]}'))
    assert at_limit.status == 200
    deeper = await call(limits(inner), scope(headers=JSON), Client(b'{"a": [[[{"b": 1}]]]}'))
    assert deeper.status == 400
    assert deeper.json() == {"error": "the JSON is nested deeper than MAX_JSON_DEPTH=4", "type": "invalid_body"}
    assert len(inner.calls) == 1


async def post(path: str, body: bytes) -> tuple[object, Inner]:
    inner = Inner()
    return await call(limits(inner, max_body_bytes=10_000, max_json_depth=32), scope(path=path, headers=JSON),
                      Client(body)), inner


async def test_lone_surrogates_are_refused_where_they_are_and_pairs_pass() -> None:
    answer, inner = await post("/conversation/invoke", b'{"input": {"messages": [{"role": "user", "content": '
                                                       b'"a\\ud800b"}]}}')
    assert answer.status == 422 and not inner.calls  # type: ignore[attr-defined]
    assert answer.json()["detail"][0]["loc"] == ["body", "input", "messages", 0, "content"]  # type: ignore[attr-defined]
    key, _ = await post("/single-turn/invoke", b'{"input": "hi", "config": {"metadata": {"\\udfff": 1}}}')
    assert key.json()["detail"][0]["loc"] == ["body", "config", "metadata", "(a key)"]  # type: ignore[attr-defined]
    pair, inner = await post("/single-turn/invoke", b'{"input": "\\ud83d\\ude00 \\u4f60"}')
    assert pair.status == 200 and inner.calls  # type: ignore[attr-defined]
    escaped, inner = await post("/single-turn/invoke", b'{"input": "\\\\ud800 is only text"}')
    assert escaped.status == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "body", "where"), [
    ("/chat", b'{"message": "hi", "stop": ["\\ud800"]}', ["body", "stop", 0]),
    ("/chat", b'{"message": "hi", "system_prompt": "x\\udc00"}', ["body", "system_prompt"]),
    ("/chat-conversation", b'{"messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}',
     ["body", "messages", 0, "name"]),
    ("/single-turn/stream", b'{"input": "hi", "kwargs": {"\\ud800": 1}}', ["body", "kwargs", "(a key)"]),
])
async def test_a_surrogate_in_any_field_of_any_model_route_is_a_422_naming_it(path: str, body: bytes,
                                                                               where: list[object]) -> None:
    """Every string a model route takes may reach the model server: none is dropped or passed on unchecked."""
    answer, inner = await post(path, body)
    assert answer.status == 422 and not inner.calls  # type: ignore[attr-defined]
    assert answer.json()["detail"][0]["loc"] == where  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "conversation", "stop": ["\\ud800"], "messages": [{"role": "user", "content": "hi"}]}', "stop[0]"),
    (b'{"model": "conversation", "messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}',
     "messages[0].name"),
    (b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "conversation", "user": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "user"),
])
async def test_v1_names_the_field_in_openais_shape(body: bytes, param: str) -> None:
    """The attack: a lone surrogate in `stop` reached langchain-openai and was a 500. /v1 answers it as every
    invalid field: 400, OpenAI's error shape, the field in `param`."""
    answer, inner = await post("/v1/chat/completions", body)
    assert answer.status == 400 and not inner.calls  # type: ignore[attr-defined]
    error = answer.json()["error"]  # type: ignore[attr-defined]
    assert error["param"] == param and error["code"] == "invalid_body" and "surrogate" in error["message"]


@pytest.mark.parametrize("query", [b"message=%ED%A0%80", b"message=hi&system_prompt=%FF", b"message=%C3"])
async def test_a_query_that_is_not_utf8_once_decoded_is_refused_naming_it(query: bytes) -> None:
    inner = Inner()
    answer = await call(limits(inner), scope(method="GET", path="/chat", query=query))
    assert answer.status == 422 and not inner.calls
    assert answer.json()["detail"][0]["loc"][0] == "query" and "UTF-8" in answer.json()["detail"][0]["msg"]
    fine = await call(limits(inner), scope(method="GET", path="/chat", query=b"message=%E8%AE%B2+a%2B"))
    assert fine.status == 200


def test_where_a_surrogate_is() -> None:
    assert lone_surrogate_at({"a": ["ok", "\ud800"]}, []) == ["a", 1]
    assert lone_surrogate_at(["\U0001f642", 1, None], ["x"]) is None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_requests_without_a_body_pass_untouched(method: str) -> None:
    client = Client(b"x" * 5000)
    answer = await call(limits(Inner()), scope(method=method, headers={"content-length": "5000"}), client)
    assert answer.status == 200 and client.reads == 0


# --- the depth function -----------------------------------------------------------------------------------------

def reference_depth(text: str) -> int:
    """The depth of a JSON text by a plain character walk (slow, obviously right)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize(("text", "depth"), [
    ('[]', 1), ('{"a": [1, {"b": []}]}', 4), ('"[[[[[[[["', 0), ('["[[[[", "]]]]"]', 1),
    ('["\\"[[[[["]', 1),  # an escaped quote does not end the string
    ('["\\\\", [[[]]]]', 4),  # an escaped backslash: the quote after it does end the string
    ('["\\\\\\"[[[["]', 1),  # backslash, then an escaped quote
    ('[["unterminated [[[[[[[[', 2),  # an unterminated string runs to the end
    ('[""[[]]]', 3), ('{"": {"": {"": ""}}}', 3),
])
def test_the_depth_check_ignores_brackets_in_strings(text: str, depth: int) -> None:
    assert reference_depth(text) == depth
    assert json_deeper_than(text.encode(), depth - 1) if depth else True
    assert not json_deeper_than(text.encode(), depth)


def random_json(rng: random.Random, depth: int) -> tuple[object, int]:
    """A random JSON value whose strings hold brackets, quotes, backslashes and Chinese, and its true depth."""
    kind = rng.choice(["str", "num", "list", "dict"] if depth < 8 else ["str", "num"])
    if kind == "str":
        return "".join(rng.choice('[]{}"\\a你 ') for _ in range(rng.randint(0, 6))), 0
    if kind == "num":
        return rng.randint(-5, 5), 0
    items = [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    inner = max((d for _, d in items), default=0) + 1
    if kind == "list":
        return [v for v, _ in items], inner
    return {f"k{i}[{{\\": v for i, (v, _) in enumerate(items)}, inner


def test_the_depth_check_agrees_with_the_true_depth_of_random_json() -> None:
    rng = random.Random(14)
    for _ in range(1500):
        value, truth = random_json(rng, 0)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        assert reference_depth(text.decode()) == truth
        for limit in (max(truth - 1, 0), truth):
            assert json_deeper_than(text, limit) == (truth > limit), (text, limit)


def test_the_depth_check_counts_across_its_chunks() -> None:
    deep = b"[" * 70_000 + b"]" * 70_000  # deeper than one 64 KB chunk
    assert json_deeper_than(deep, 69_999) and not json_deeper_than(deep, 70_000)
    zigzag = b"[" * 40_000 + b"]" * 39_999 + b"[" * 40_000  # the second rise starts high in the second chunk
    assert json_deeper_than(zigzag, 40_000) and not json_deeper_than(zigzag, 40_001)


def worst_case(size: int) -> bytes:
    """Many brackets, strings and escapes: every step of the check has work to do."""
    piece = b'["\\"[", "\\\\", {"a": [1]}, '
    return (b"[" * 16 + piece * (size // len(piece)))[:size]


def timed(body: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        json_deeper_than(body, 32)
        best = min(best, time.perf_counter() - started)
    return best


def test_the_depth_check_is_linear() -> None:
    # The regex it replaced was quadratic: 12 s for 64 KB. Linear: four times the text, about four times the time.
    small, large = timed(worst_case(256 * 1024)), timed(worst_case(1024 * 1024))
    assert large < 0.5, f"{large:.3f}s for 1 MB"
    assert large < 8 * small + 0.01, f"256 KB {small * 1000:.1f} ms, 1 MB {large * 1000:.1f} ms: not linear"
