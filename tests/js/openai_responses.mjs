// The official `openai` Node SDK (pinned in package.json) against a live server's /v1/responses: what a Node client
// of OpenAI's Responses API does with it. tests/e2e/openai/test_responses_js.py drives it and asserts on what it
// prints.
//
// Usage: node openai_responses.mjs <base url> [--key KEY] [--reasoning <base url>] [--slow <base url>]
//   <base url>   a server with the scripted model: responses.create (whole, `stream: true`), responses.stream (its
//                events, its `.on` handlers, its final response), a background create → retrieve until it ends →
//                its stream resumed with responses.stream({response_id, starting_after}), and a refusal (`tools`)
//   --reasoning  a server whose scripted model reasons first: responses.stream's events and final response
//   --slow       a server with a long, slow reply: a background create, retrieve until it has said something, then
//                responses.cancel, retrieve, and the replayed events (retrieve with `stream: true`)
// Prints one JSON object, a key per section. No retries (`maxRetries: 0`): each result is what the server answered.
// Every wait is bounded: the SDK's timeout, and at most POLLS polls.
import OpenAI from "openai";
import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { key: { type: "string", default: "sk-unused" }, reasoning: { type: "string" }, slow: { type: "string" } },
});
const [base] = positionals;
if (!base) {
  console.error("usage: node openai_responses.mjs <base url> [--key KEY] [--reasoning <base url>] [--slow <base url>]");
  process.exit(2);
}

const POLLS = 400; // 50 ms apart: 20 s at most
const sdkVersion = JSON.parse(readFileSync(new URL("./node_modules/openai/package.json", import.meta.url))).version;
const clientFor = (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: values.key, maxRetries: 0, timeout: 30_000 });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// An event as printed: its type and number, and what a delta carries.
const brief = (event) => {
  const kept = { type: event.type, sequence_number: event.sequence_number };
  for (const field of ["delta", "snapshot", "output_index", "item_id"]) {
    if (field in event) kept[field] = event[field];
  }
  if (event.response) kept.response = { id: event.response.id, status: event.response.status };
  return kept;
};
// The text of a Response's message items (what the SDK's `output_text` is, for the calls that do not add it).
const textOf = (response) =>
  response.output.filter((item) => item.type === "message")
    .flatMap((item) => item.content).filter((part) => part.type === "output_text").map((part) => part.text).join("");
const summary = (response) => ({
  id: response.id, object: response.object, status: response.status, model: response.model,
  background: response.background, output_text: response.output_text ?? null, text: textOf(response),
  output: response.output.map((item) => ({
    type: item.type, status: item.status,
    text: (item.content ?? []).map((part) => part.text).join(""),
  })),
  usage: response.usage ?? null, instructions: response.instructions ?? null, metadata: response.metadata ?? null,
  incomplete_details: response.incomplete_details ?? null, error: response.error ?? null,
});

async function poll(what, done) {
  let last;
  for (let i = 0; i < POLLS; i++) {
    last = await what();
    if (done(last)) return { response: last, polls: i + 1 };
    await sleep(50);
  }
  throw new Error(`never reached: still ${last?.status} after ${POLLS} polls`);
}

async function streamed(client, body) {
  // responses.stream: the events as iterated, the deltas its `.on` handler saw (with the SDK's snapshot), the final.
  const stream = client.responses.stream(body);
  const handled = [];
  stream.on("response.output_text.delta", (event) => handled.push({ delta: event.delta, snapshot: event.snapshot }));
  const events = [];
  for await (const event of stream) events.push(brief(event));
  const final = await stream.finalResponse();
  return { events, handled, final: summary(final) };
}

async function basic(client) {
  const { data: whole, response: http } = await client.responses
    .create({ model: "conversation", input: "hi there", instructions: "be brief", metadata: { case: "whole" } })
    .withResponse();
  const createStream = [];
  for await (const event of await client.responses.create({ model: "conversation", input: "hi", stream: true })) {
    createStream.push(brief(event));
  }
  const last = createStream.at(-1);
  const retrievedAfterStream = last?.response ? summary(await client.responses.retrieve(last.response.id)) : null;
  return {
    create: { ...summary(whole), runId: http.headers.get("x-run-id") },
    createStream: { events: createStream, retrieved: retrievedAfterStream },
    stream: await streamed(client, { model: "conversation", input: "hi" }),
  };
}

async function background(client) {
  const started = await client.responses.create({ model: "conversation", input: "hi", background: true });
  const { response: ended, polls } = await poll(() => client.responses.retrieve(started.id),
                                                (r) => !["queued", "in_progress"].includes(r.status));
  // The whole stream replayed, then the SDK's resume after one of its numbers (it filters on them itself).
  const replayed = [];
  for await (const event of await client.responses.retrieve(started.id, { stream: true })) replayed.push(brief(event));
  const after = replayed[5]?.sequence_number ?? 0;
  const resumed = await streamed(client, { response_id: started.id, starting_after: after });
  return { started: summary(started), polls, ended: summary(ended), replayed, after, resumed };
}

async function refusal(client) {
  try {
    await client.responses.create({ model: "conversation", input: "hi", tools: [{ type: "web_search" }] });
    return { raised: false };
  } catch (error) {
    return {
      raised: true, name: error?.constructor?.name ?? null, isBadRequestError: error instanceof OpenAI.BadRequestError,
      isAPIError: error instanceof OpenAI.APIError, status: error?.status ?? null, param: error?.param ?? null,
      code: error?.code ?? null, type: error?.type ?? null, message: String(error?.message ?? error),
    };
  }
}

async function cancel(client) {
  const started = await client.responses.create({ model: "conversation", input: "hi", background: true });
  const { response: begun } = await poll(() => client.responses.retrieve(started.id), (r) => textOf(r).length > 0);
  const cancelled = await client.responses.cancel(started.id);
  const retrieved = await client.responses.retrieve(started.id);
  const replayed = [];
  for await (const event of await client.responses.retrieve(started.id, { stream: true })) replayed.push(brief(event));
  return { started: summary(started), begun: summary(begun), cancelled: summary(cancelled),
           retrieved: summary(retrieved), replayed };
}

const client = clientFor(base);
const results = { sdkVersion, ...(await basic(client)), background: await background(client),
                  refusal: await refusal(client) };
if (values.reasoning) results.reasoning = await streamed(clientFor(values.reasoning), { model: "conversation",
                                                                                       input: "hi" });
if (values.slow) results.cancel = await cancel(clientFor(values.slow));
process.stdout.write(JSON.stringify(results) + "\n");
