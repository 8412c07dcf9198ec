"""One deployment as another's upstream: the front runs this project's own `openai` provider pointed at the back's
`/v1`, with the back's API key as `OPENAI_API_KEY`. Tokens stream end to end, through both surfaces of the front;
a client that leaves the front stops the back's generation (the back's `/health` counts the embedded model's
generations running or waiting)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from chains.models.fake import scripted_tokens
from tests.support.clients import LONG, LONG_LOCAL
from tests.support.fixtures import ServeApp, app_fixture, pointed_at
from tests.support.servers import LiveServer
from tests.support.sse import parse_sse

KEY = "sk-back-key-0123456789"
SCRIPT = scripted_tokens(20)


def front_of(back: str, name: str) -> Callable[..., Iterator[LiveServer]]:
    """A fixture: the front, our app's openai provider pointed at the `back` fixture's `/v1` with its key."""
    # The front asks for up to 2,000 tokens at temperature 0: the back's long reply runs ~20 s unless stopped.
    return app_fixture(name, **pointed_at(back, "conversation", key=KEY), OPENAI_TIMEOUT="30", MAX_TOKENS="2000",
                       TEMPERATURE="0", doc=f"The front of {back}.")


def client_of(front: LiveServer, timeout: float) -> openai.OpenAI:
    """OpenAI's client on the front's `/v1` (no key: the front has none), no retries."""
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0, timeout=timeout)


scripted_back = app_fixture("v1-scripted-back", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20", API_KEYS=KEY)
scripted_front = front_of("scripted_back", "v1-scripted-front")


def test_tokens_stream_end_to_end_through_the_fronts_chat(scripted_front: LiveServer) -> None:
    response = httpx.post(f"{scripted_front.url}/chat", json={"message": "hi"}, timeout=30)
    events = parse_sse(response.text)
    tokens = [event.json()["token"] for event in events if event.event == "message"]
    # Each of the back's tokens is one token at the front: newlines, \r, Chinese and emoji intact over two hops.
    assert tokens == SCRIPT
    done = events[-1]
    assert done.event == "done"
    assert done.json()["full_response"] == "".join(SCRIPT) and done.json()["finish_reason"] == "stop"


def test_tokens_stream_end_to_end_through_the_fronts_v1(scripted_front: LiveServer) -> None:
    client = client_of(scripted_front, timeout=30)
    chunks = list(client.chat.completions.create(model="system-prompt", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert [chunk.choices[0].delta.content for chunk in chunks[1:-1]] == SCRIPT
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_backs_refusal_reaches_the_front_as_its_cause(serve_app: ServeApp, scripted_back: LiveServer) -> None:
    front = serve_app("v1-wrong-key-front", CHAT_PROVIDER="openai", OPENAI_API_KEY="sk-not-the-backs-key",
                      OPENAI_BASE_URL=f"{scripted_back.url}/v1", OPENAI_MODEL="conversation")
    failed = httpx.post(f"{front.url}/conversation/invoke", timeout=30,
                        json={"input": {"messages": [{"role": "user", "content": "hi"}]}})
    assert failed.status_code == 502 and failed.json()["type"] == "upstream_auth"
    assert "sk-not-the-backs-key" not in failed.text


# --- a disconnect at the front cancels the back ----------------------------------------------------------------

local_back = app_fixture("v1-local-back", **LONG_LOCAL, API_KEYS=KEY,
                         doc="The embedded model allowed a long reply (2,000 tokens, ~20 s if nothing stops it).")
local_front = front_of("local_back", "v1-local-front")


def generations(server: LiveServer) -> int:
    return httpx.get(f"{server.url}/health").json()["generations"]


# Left alone, the back's reply runs ~20 s or more; stopped, it ends at its next token once the cancellation has
# crossed both servers: 0.1–0.5 s measured mid-reply, up to 1.5 s on this shared 2-core machine under load.
STOPPED_WITHIN = 5.0


def seconds_until_idle(server: LiveServer, limit: float = 10) -> float:
    """Seconds until `server`'s embedded model has no generation running or waiting."""
    started = time.monotonic()
    while generations(server) and time.monotonic() - started < limit:
        time.sleep(0.01)
    assert generations(server) == 0, f"the back still generates {limit:.0f} s after the client left the front"
    return time.monotonic() - started


def assert_the_back_stops(back: LiveServer, how: str) -> None:
    """The back's generation ends within STOPPED_WITHIN seconds of the client leaving (`how`, for the log)."""
    waited = seconds_until_idle(back)
    print(f"the back stopped {1000 * waited:.0f} ms after {how}")
    assert waited < STOPPED_WITHIN


def test_leaving_the_fronts_chat_stream_stops_the_backs_generation(local_back: LiveServer,
                                                                   local_front: LiveServer) -> None:
    with httpx.stream("POST", f"{local_front.url}/chat", json={"message": LONG}, timeout=60) as response:
        lines = response.iter_lines()  # kept: a line iterator dropped mid-stream closes the connection
        tokens = 0
        while tokens < 3:
            tokens += next(lines).startswith('data: {"token"')
        time.sleep(0.5)
        assert generations(local_back) == 1  # the back is decoding this reply, the client still there
    assert_the_back_stops(local_back, "the client left the front's /chat")


def test_leaving_the_fronts_v1_stream_stops_the_backs_generation(local_back: LiveServer,
                                                                 local_front: LiveServer) -> None:
    client = client_of(local_front, timeout=60)
    stream = client.chat.completions.create(model="conversation", stream=True,
                                            messages=[{"role": "user", "content": LONG}])
    chunks = iter(stream)
    for _ in range(4):
        next(chunks)
    time.sleep(0.5)
    assert generations(local_back) == 1
    stream.close()
    assert_the_back_stops(local_back, "the client left the front's /v1 stream")


def test_a_non_streaming_client_that_gives_up_stops_the_backs_generation(local_back: LiveServer,
                                                                         local_front: LiveServer) -> None:
    # It gives up after 3 s, mid-reply: the back has been decoding for a while (its first token takes ~0.3 s).
    client = client_of(local_front, timeout=3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="conversation", messages=[{"role": "user", "content": LONG}])
    assert_the_back_stops(local_back, "a non-streaming client left the front")
