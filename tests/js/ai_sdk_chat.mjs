// The Vercel AI SDK's own client (`ai`, pinned in package.json) against a live server's POST /api/chat and
// GET /api/chat/{id}/stream: its `DefaultChatTransport` sends and reconnects (and validates every chunk with the
// SDK's UI message chunk schema), its `readUIMessageStream` assembles the message, as `useChat` would.
// tests/e2e/front_ends/test_ai_sdk_transport.py drives it and asserts on what it prints.
//
// Usage: node ai_sdk_chat.mjs '<plan json>'. The plan: {"steps": [step, ...]}, run in order, each one printing one
// JSON line {"step": i, ...result}. A step:
//   {"op": "send", "url": base, "chatId", "messages": [UIMessage], "trigger"?, "messageId"?, "headers"?,
//    "query"?: "?on_disconnect=cancel" -- appended to the endpoint, as a page would give it in `api`
//    "announceAfterDeltas"?: n  -- print {"announce": "deltas", "deltas": n, "messageId"} once n text or reasoning
//                                  deltas have arrived (the test cuts the connection then), and go on reading
//    "abortAfterDeltas"?: n     -- abort the request (AbortSignal) after n deltas
//    "exitAfterDeltas"?: n      -- the process goes away after n deltas, as a reloaded page does: prints the
//                                  result so far and exits without closing anything}
//   {"op": "reconnect", "url": base, "chatId", "headers"?}: DefaultChatTransport.reconnectToStream, read from an
//    empty message, as a reloaded page (or useChat's resume after a cut: the server's stream is a replay) does.
// A result: {op, request: {status, headers} of the HTTP answer, resumed: false when reconnectToStream answered null
// (204), chunks: the chunks as the SDK parsed them, message: the assembled UIMessage, snapshots: how many updates
// readUIMessageStream emitted, errors: [{source: call|stream|message, name, message,
// statusCode, body}]: the call's (a refusal), the chunk stream's (a cut, a chunk the schema refuses), readUIMessageStream's
// (an error chunk), aborted}.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const plan = JSON.parse(process.argv[2] ?? "null");
if (!plan || !Array.isArray(plan.steps)) {
  console.error("usage: node ai_sdk_chat.mjs '{\"steps\": [...]}'");
  process.exit(2);
}

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const describe = (source, error) => ({ source, name: error?.name ?? "Error", message: String(error?.message ?? error),
                               statusCode: error?.statusCode ?? null, body: error?.responseBody ?? null });

function transportFor(step, request) {
  return new DefaultChatTransport({
    api: `${step.url}/api/chat${step.query ?? ""}`, // a query goes on the resume URL too (after its path)
    headers: step.headers,
    // The SDK's own hook for the fetch it makes: only to see the answer's status and headers.
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      request.url = String(url);
      request.method = init?.method ?? "GET";
      request.status = response.status;
      request.headers = Object.fromEntries(response.headers.entries());
      return response;
    },
  });
}

async function runStep(step, index) {
  const request = {};
  const result = { step: index, op: step.op, request, resumed: null, chunks: [], message: null, snapshots: 0,
                   errors: [], aborted: false };
  const transport = transportFor(step, request);
  const controller = new AbortController();
  let stream;
  try {
    if (step.op === "send") {
      stream = await transport.sendMessages({
        trigger: step.trigger ?? "submit-message", chatId: step.chatId, messageId: step.messageId,
        messages: step.messages, abortSignal: controller.signal,
      });
    } else if (step.op === "reconnect") {
      stream = await transport.reconnectToStream({ chatId: step.chatId, abortSignal: controller.signal });
      result.resumed = stream !== null;
      if (stream === null) return result;
    } else {
      throw new Error(`unknown op ${step.op}`);
    }
  } catch (error) {
    result.errors.push(describe("call", error));
    return result;
  }

  const [forChunks, forMessage] = stream.tee();
  let deltas = 0;
  const onDelta = () => {
    deltas += 1;
    if (deltas === step.announceAfterDeltas) {
      print({ announce: "deltas", step: index, deltas, messageId: result.chunks.find((c) => c.type === "start")?.messageId ?? null });
    }
    if (deltas === step.abortAfterDeltas) {
      result.aborted = true;
      controller.abort();
    }
    if (deltas === step.exitAfterDeltas) {
      print(result);
      process.exit(0); // the connection goes with the process, as with a page reloaded mid-reply
    }
  };
  const recording = (async () => {
    const reader = forChunks.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        result.chunks.push(value);
        if (value.type === "text-delta" || value.type === "reasoning-delta") onDelta();
      }
    } catch (error) {
      result.errors.push(describe("stream", error));
    }
  })();
  const assembling = (async () => {
    for await (const message of readUIMessageStream({ stream: forMessage,
                                                      onError: (error) => result.errors.push(describe("message", error)) })) {
      result.message = message;
      result.snapshots += 1;
    }
  })();
  await Promise.all([recording, assembling]);
  return result;
}

const deadline = setTimeout(() => {
  console.error("ai_sdk_chat.mjs: timed out");
  process.exit(3);
}, plan.timeoutMs ?? 60000);
for (const [index, step] of plan.steps.entries()) print(await runStep(step, index));
clearTimeout(deadline);
