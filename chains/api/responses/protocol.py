"""The Responses API on the wire: the `POST /v1/responses` request, the Response object, and the one encoding of
a generation's events as Responses stream events.

- `ResponseRequest` — what `POST /v1/responses` accepts. Unknown fields are refused by name (400, `param`); the
  fields this server cannot honour (`tools`, `previous_response_id`, `store: false`, …) are accepted only at the
  value that asks for nothing, as on `/v1/chat/completions`.
- `ResponseEvents` — the encoding (an `EventFormat`): `event: <type>` + `data: {json}` frames in OpenAI's order
  (response.created, response.in_progress, a reasoning item when the model reasons, the message item with its
  text deltas, then response.completed | response.incomplete | response.failed). Every run of this surface is
  kept in this one encoding, whether the client streams or not, so that any run can be retrieved, resumed and
  cancelled later (chains.api.responses.serving).
- `response_of(events)` folds frames back into the Response object (what `GET /v1/responses/{id}` answers).

Sequence numbers come from the run's event seq: one run event may hold several frames (the first token opens
the message item), so frame `i` of run event `seq` is numbered `seq * STRIDE + i`. They are unique and
increasing, as the SDK's `responses.stream(response_id=…, starting_after=N)` needs (it filters on them), and
`starting_after=N` maps back to the run event `N // STRIDE`: a resume joins the run after event
`N // STRIDE - 1` (Last-Event-ID `<run id>:<seq>`) and drops that event's frames numbered N or less.

The Responses API has no cancelled event: a cancelled response ends with `response.incomplete` whose response has
status `cancelled` (the SDK's types accept it).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from chains.api.openai.protocol import ReasoningEffort, only_at
from chains.runnables.chat import BoundedText
from chains.streaming.events import LOST_ENDINGS, DoneEvent, ErrorEvent, StartEvent, Usage

# Frames per run event, at most: the done event of a reply that reasoned and said nothing closes the reasoning
# item (3), opens and closes the message item (2 + 3) and ends the response (1).
STRIDE = 10
RESPONSE_ID_PREFIX = "resp_"
MAX_OUTPUT_TOKENS = 2**31 - 1  # it is echoed in every Response: within what JSON encoders take as an integer
ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "cancelled", "failed"]


def response_id_of(run_id: str) -> str:
    return RESPONSE_ID_PREFIX + run_id


def run_id_of(response_id: str) -> str:
    return response_id.removeprefix(RESPONSE_ID_PREFIX)


# --- the request -------------------------------------------------------------------------------------------------

def _refused(why: str) -> AfterValidator:
    """A field this server cannot honour at any value but none."""

    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"not supported: {why}")
        return value

    return AfterValidator(check)


_TEXT_PARTS = ("input_text", "output_text")


def _text_of(content: Any) -> Any:
    """A message's content as one string: the string, or its text parts joined. Before validation, so that a wrong
    part is one error naming it (an image part, say), not one per union branch."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            shown = f"a {str(kind)[:40]!r} part" if isinstance(kind, str) else "not a text part"
            raise ValueError(f"part {i} is {shown}: only text parts ({{type: input_text|output_text, text}}) are "
                             "supported")
        texts.append(part["text"])
    return "".join(texts)


_PART = {"type": "object", "required": ["type", "text"],
         "properties": {"type": {"enum": list(_TEXT_PARTS)}, "text": {"type": "string"}}}
InputContent = Annotated[str, BeforeValidator(_text_of), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": _PART}]})]


class InputMessage(BaseModel):
    """One item of `input`: a message (`type: message` or none), or an earlier response's output message sent
    back as it was (its `id` and `status` are accepted and not used)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: InputContent
    id: Annotated[str, Field(max_length=100)] | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _without_reasoning(items: Any) -> Any:
    # An earlier response's output sent back (`input=[*previous.output, …]`) holds its reasoning items: the chains
    # take no reasoning, and OpenAI's models would only read it, so they are dropped here.
    if isinstance(items, list):
        return [item for item in items if not (isinstance(item, dict) and item.get("type") == "reasoning")]
    return items


Input = Annotated[str | Annotated[list[InputMessage], Field(min_length=1)], BeforeValidator(_without_reasoning)]


class ReasoningParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: ReasoningEffort | None = Field(None, description="passed to the upstream (the openai provider); refused "
                                           "by the local and scripted providers, which cannot honour it")
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="accepted and not used: the reasoning is streamed as it is, not summarised")
    generate_summary: Literal["auto", "concise", "detailed"] | None = Field(None, description="older `summary`")


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"] = Field(description="replies are plain text")


class TextParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="accepted and not used")


class StreamOptionsParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_obfuscation: bool | None = Field(None, description="accepted and not used (no padding is added)")


_NO_TOOLS = "this server runs chat chains without tools"
def _tool_choice(value: Any) -> Any:
    if value is not None and value not in ("none", "auto"):  # without tools, both ask for nothing
        raise ValueError(f"only 'none' or 'auto' is supported: {_NO_TOOLS}")
    return value


_NOT_KEPT = "responses are kept only as runs (RUN_TTL), not as conversations"


class ResponseRequest(BaseModel):
    """`POST /v1/responses`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a chain: `conversation` (any history), `system-prompt` (instructions and one "
                       "user message), `single-turn` (one user message); see `GET /v1/models`")
    input: Input = Field(description="the user's text, or a list of messages")
    instructions: BoundedText | None = Field(None, description="the system prompt")
    max_output_tokens: int | None = Field(
        None, ge=1, le=MAX_OUTPUT_TOKENS,
        description="capped at the server's MAX_TOKENS; a reply cut there ends `incomplete` (max_output_tokens)")
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool | None = False
    stream_options: StreamOptionsParam | None = None
    background: bool | None = Field(False, description="answer at once; the generation goes on, to be retrieved "
                                    "(`GET /v1/responses/{id}`, its stream resumed) or cancelled")
    store: Annotated[bool | None, only_at(True, "a response is kept as its run, for RUN_TTL seconds")] = None
    reasoning: ReasoningParam | None = None
    text: TextParam | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="kept with the response and returned with it")
    # Accepted and not used: they change nothing in the reply.
    user: BoundedText | None = Field(None, max_length=256, description="accepted and not used")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        None, description="accepted and not used")
    prompt_cache_key: BoundedText | None = Field(None, max_length=1024, description="accepted and not used")
    safety_identifier: BoundedText | None = Field(None, max_length=256, description="accepted and not used")
    parallel_tool_calls: bool | None = Field(None, description="accepted and not used (there are no tools)")
    # Accepted only at the value that asks for nothing.
    tools: Annotated[list[Any] | None, only_at([], _NO_TOOLS)] = None
    tool_choice: Annotated[Any, AfterValidator(_tool_choice)] = None
    max_tool_calls: Annotated[int | None, _refused(_NO_TOOLS)] = None
    top_p: Annotated[float | None, only_at(1, "the server's own sampling settings apply")] = None
    top_logprobs: Annotated[int | None, only_at(0, "logprobs are not supported")] = None
    include: Annotated[list[str] | None, only_at([], "there is nothing more to include")] = None
    truncation: Annotated[str | None, only_at("disabled", "an input over MAX_INPUT_CHARS is refused")] = None
    previous_response_id: Annotated[str | None, _refused(_NOT_KEPT + "; send the history in `input`")] = None
    conversation: Annotated[Any, _refused(_NOT_KEPT + "; send the history in `input`")] = None
    prompt: Annotated[Any, _refused("there are no stored prompts")] = None

    @property
    def streams(self) -> bool:
        return bool(self.stream)

    @property
    def in_background(self) -> bool:
        return bool(self.background)



# --- the Response object -----------------------------------------------------------------------------------------

class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """A reasoning model's thinking before its answer, as it thought it (no summary is made)."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = Field(description="the model's own count, reasoning tokens included")
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage | None) -> ResponseUsage | None:
        if usage is None:
            return None
        details = usage.completion_tokens_details
        reasoning = details.reasoning_tokens if details is not None else 0
        return cls(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                   total_tokens=usage.total_tokens,
                   output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning))


class ResponseError(BaseModel):
    code: str = Field(description="rate_limit_exceeded or server_error (OpenAI's codes)")
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """The Response: what `POST /v1/responses` answers without `stream`, and `GET /v1/responses/{id}`."""

    id: str = Field(description="`resp_<run id>`: the run behind it is `/chat/runs/{run id}` too")
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool
    model: str
    output: list[ReasoningItem | OutputMessage]
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = False
    tool_choice: Literal["none", "auto"] = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    store: bool = True
    previous_response_id: None = None
    completed_at: int | None = None


# --- the encoding ------------------------------------------------------------------------------------------------

def _seq_of(event_id: bytes) -> int:
    return int(event_id.rpartition(b":")[2])


class _Frames:
    """The frames of one run event, numbered from `seq * STRIDE`."""

    __slots__ = ("number", "parts")

    def __init__(self, event_id: bytes) -> None:
        self.number = _seq_of(event_id) * STRIDE
        self.parts: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        data = orjson.dumps({"type": kind, "sequence_number": self.number, **fields})
        self.parts.append(b"event: %b\ndata: %b\n\n" % (kind.encode(), data))
        self.number += 1

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class ResponseEvents:
    """The Responses stream encoding, one instance per response: it knows the request's echoed fields from the
    start, its id once the run starts, and what was said so far (for a failed response's output)."""

    name = "responses"

    def __init__(self, request: ResponseRequest) -> None:
        self.model = request.model
        self.created_at = int(time.time())
        self.request = request
        self.id = ""
        self.message_id = self.reasoning_id = ""
        self.reasoning_index: int | None = None  # the reasoning item's output index, while it is open
        self.message_index: int | None = None
        self.outputs = 0
        self.texts: list[str] = []
        self.thoughts: list[str] = []
        self._closed_reasoning: ReasoningItem | None = None
        self._delta_head = self._delta_tail = b""

    # -- the Response object -----------------------------------------------------------------------------------

    def response(self, status: ResponseStatus, output: list[ReasoningItem | OutputMessage] | None = None,
                 usage: ResponseUsage | None = None, error: ResponseError | None = None,
                 incomplete: IncompleteDetails | None = None) -> ResponseObject:
        request = self.request
        ended = status in ("completed", "incomplete", "cancelled", "failed")
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status, background=request.in_background,
            model=self.model, output=output or [], usage=usage, error=error, incomplete_details=incomplete,
            instructions=request.instructions, metadata=request.metadata or {}, temperature=request.temperature,
            max_output_tokens=request.max_output_tokens, completed_at=int(time.time()) if ended else None)

    def _reasoning_item(self, status: Literal["in_progress", "completed", "incomplete"]) -> ReasoningItem:
        return ReasoningItem(id=self.reasoning_id, content=[ReasoningText(text="".join(self.thoughts))],
                             status=status)

    def _message(self, status: Literal["in_progress", "completed", "incomplete"]) -> OutputMessage:
        return OutputMessage(id=self.message_id, content=[OutputText(text="".join(self.texts))], status=status)

    def _output(self, status: Literal["completed", "incomplete"]) -> list[ReasoningItem | OutputMessage]:
        output: list[ReasoningItem | OutputMessage] = []
        if self._closed_reasoning is not None:
            output.append(self._closed_reasoning)
        elif self.reasoning_index is not None:
            output.append(self._reasoning_item(status))
        if self.message_index is not None:
            output.append(self._message(status))
        return output

    # -- items opening and closing ------------------------------------------------------------------------------

    def _open_reasoning(self, frames: _Frames) -> None:
        self.reasoning_index, self.outputs = self.outputs, self.outputs + 1
        item = ReasoningItem(id=self.reasoning_id, content=[], status="in_progress")
        frames.add("response.output_item.added", output_index=self.reasoning_index, item=item.model_dump())
        frames.add("response.content_part.added", item_id=self.reasoning_id, output_index=self.reasoning_index,
                   content_index=0, part={"type": "reasoning_text", "text": ""})

    def _close_reasoning(self, frames: _Frames) -> None:
        index = self.reasoning_index
        if index is None or self._closed_reasoning is not None:
            return
        text = "".join(self.thoughts)
        frames.add("response.reasoning_text.done", item_id=self.reasoning_id, output_index=index, content_index=0,
                   text=text)
        frames.add("response.content_part.done", item_id=self.reasoning_id, output_index=index, content_index=0,
                   part={"type": "reasoning_text", "text": text})
        self._closed_reasoning = self._reasoning_item("completed")
        frames.add("response.output_item.done", output_index=index, item=self._closed_reasoning.model_dump())

    def _open_message(self, frames: _Frames) -> None:
        self._close_reasoning(frames)
        self.message_index, self.outputs = self.outputs, self.outputs + 1
        item = OutputMessage(id=self.message_id, content=[], status="in_progress")
        frames.add("response.output_item.added", output_index=self.message_index, item=item.model_dump())
        frames.add("response.content_part.added", item_id=self.message_id, output_index=self.message_index,
                   content_index=0, part=OutputText(text="").model_dump())
        # The hot path: a delta is this head, the text as a JSON string, and the tail with its number.
        self._delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                            b'"item_id":%b,"output_index":%d,"content_index":0,"logprobs":[],"delta":'
                            % (orjson.dumps(self.message_id), self.message_index))
        self._delta_tail = b',"sequence_number":%d}\n\n'

    # -- EventFormat --------------------------------------------------------------------------------------------

    def start(self, event_id: bytes, event: StartEvent) -> bytes:
        self.id = response_id_of(event.run_id)
        self.message_id, self.reasoning_id = "msg_" + event.run_id, "rs_" + event.run_id
        frames = _Frames(event_id)
        for kind in ("response.created", "response.in_progress"):
            frames.add(kind, response=self.response("in_progress").model_dump())
        return frames.bytes()

    def tokens(self, event_id: bytes, text: str, token_count: int) -> bytes:
        self.texts.append(text)
        if self.message_index is not None:  # every token but the first: one frame
            return self._delta_head + orjson.dumps(text) + self._delta_tail % (_seq_of(event_id) * STRIDE)
        frames = _Frames(event_id)
        self._open_message(frames)
        return frames.bytes() + self._delta_head + orjson.dumps(text) + self._delta_tail % frames.number

    def reasoning(self, event_id: bytes, text: str, count: int) -> bytes:
        if self.message_index is not None:
            # Thinking after the answer has begun: OpenAI's order has no place for it (the reasoning item is done).
            return b""
        self.thoughts.append(text)
        frames = _Frames(event_id)
        if self.reasoning_index is None:
            self._open_reasoning(frames)
        frames.add("response.reasoning_text.delta", item_id=self.reasoning_id, output_index=self.reasoning_index,
                   content_index=0, delta=text)
        return frames.bytes()

    def done(self, event_id: bytes, event: DoneEvent) -> bytes:
        frames = _Frames(event_id)
        self._close_reasoning(frames)
        if self.message_index is None:  # nothing was said: still a message, empty, as OpenAI answers it
            self._open_message(frames)
        cut = event.status == "completed" and event.finish_reason == "length"
        status: ResponseStatus = "cancelled" if event.status == "cancelled" else "incomplete" if cut else "completed"
        item_status: Literal["completed", "incomplete"] = "completed" if status == "completed" else "incomplete"
        text, index = "".join(self.texts), self.message_index
        frames.add("response.output_text.done", item_id=self.message_id, output_index=index, content_index=0,
                   text=text, logprobs=[])
        frames.add("response.content_part.done", item_id=self.message_id, output_index=index, content_index=0,
                   part=OutputText(text=text).model_dump())
        frames.add("response.output_item.done", output_index=index, item=self._message(item_status).model_dump())
        response = self.response(status, self._output(item_status), ResponseUsage.of(event.usage),
                                 incomplete=IncompleteDetails(reason="max_output_tokens") if cut else None)
        frames.add("response.completed" if status == "completed" else "response.incomplete",
                   response=response.model_dump())
        return frames.bytes()

    def error(self, event_id: bytes, event: ErrorEvent) -> bytes:
        frames = _Frames(event_id)
        code = "rate_limit_exceeded" if event.type == "rate_limited" else "server_error"
        response = self.response("failed", self._output("incomplete"),
                                 error=ResponseError(code=code, message=event.error))
        frames.add("response.failed", response=response.model_dump())
        return frames.bytes()


    @staticmethod
    def lost(kept: bytes, event_id: bytes, event: ErrorEvent) -> bytes:
        """`response.failed`, with the Response object the kept frames built (its output marked incomplete)."""
        created = next((frame for frame in frames_of(kept) if isinstance(frame.get("response"), dict)), None)
        if created is None:
            return b""
        response = response_of(kept, created["response"].get("id"))
        if response is None:
            return b""
        for item in response.get("output", []):
            if isinstance(item, dict) and item.get("status") == "in_progress":
                item["status"] = "incomplete"
        response.update(status="failed", completed_at=int(time.time()),
                        error=ResponseError(code="server_error", message=event.error).model_dump())
        frames = _Frames(event_id)
        frames.add("response.failed", response=response)
        return frames.bytes()


LOST_ENDINGS.register(ResponseEvents.name, ResponseEvents.lost)


# --- reading runs back -------------------------------------------------------------------------------------------

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def frames_of(events: bytes) -> list[dict[str, Any]]:
    """The frames of this encoding in `events`, parsed; anything else (another surface's run) is skipped."""
    frames = []
    for block in events.split(b"\n\n"):
        if not block.startswith(b"event: response."):
            continue
        _, found, data = block.partition(b"\ndata: ")
        try:
            frame = json.loads(data) if found else None
        except ValueError:
            continue
        if isinstance(frame, dict) and isinstance(frame.get("type"), str):
            frames.append(frame)
    return frames


def response_of(events: bytes, response_id: str) -> dict[str, Any] | None:
    """The Response object as the frames in `events` leave it: the last full response they carry, with the items
    and text streamed after it; None when they carry none of `response_id` (not a run of this surface)."""
    state: dict[str, Any] | None = None
    for frame in frames_of(events):
        kind = frame["type"]
        if "response" in frame:
            if isinstance(frame["response"], dict) and frame["response"].get("id") == response_id:
                state = frame["response"]
            continue
        if state is None:
            continue
        output: list[dict[str, Any]] = state["output"]
        index = frame.get("output_index")
        if kind == "response.output_item.added" and index == len(output):
            output.append(frame["item"])
        elif kind == "response.output_item.done" and isinstance(index, int) and index < len(output):
            output[index] = frame["item"]
        elif kind == "response.content_part.added" and isinstance(index, int) and index < len(output):
            output[index]["content"].append(frame["part"])
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta") and isinstance(index, int) \
                and index < len(output) and output[index]["content"]:
            output[index]["content"][-1]["text"] += frame["delta"]
    return state


async def after_sequence(events: AsyncIterator[bytes], number: int) -> AsyncIterator[bytes]:
    """`events` without the frames numbered `number` or less: those of the first run event it resumes at (every
    later one is numbered above them). Once past them, the bytes pass as they are."""
    try:
        async for chunk in events:
            kept = [block + b"\n\n" for block in chunk.split(b"\n\n")
                    if block and _number_of(block) > number]
            if kept:
                yield b"".join(kept)
                break
        async for chunk in events:
            yield chunk
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def _number_of(block: bytes) -> int:
    _, _, data = block.partition(b"\ndata: ")
    try:
        frame = json.loads(data)
    except ValueError:
        return -1
    number = frame.get("sequence_number") if isinstance(frame, dict) else None
    return number if isinstance(number, int) else -1
