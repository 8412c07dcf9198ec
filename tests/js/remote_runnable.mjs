// LangChain.js RemoteRunnable (@langchain/core 0.3, the last JS line that ships it) against a live server.
// Usage: node remote_runnable.mjs <base url>. Prints one JSON object: per chain, what invoke, batch and stream
// returned, and what the server answered to a config it must refuse. tests/e2e/langserve/test_remote_runnable_js.py
// checks it.
import { RemoteRunnable } from "@langchain/core/runnables/remote";
import { HumanMessage, AIMessage } from "@langchain/core/messages";

const base = process.argv[2];
if (!base) {
  console.error("usage: node remote_runnable.mjs <base url>");
  process.exit(2);
}

const INPUTS = {
  "single-turn": "What is the capital of France?",
  "system-prompt": { message: "What is the capital of France?", system_prompt: "Answer in one sentence." },
  conversation: {
    messages: [
      { role: "user", content: "Hi, I am Ana." },
      { role: "assistant", content: "Hello Ana!" },
      { role: "user", content: "What is the capital of France?" },
    ],
  },
};

async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return String(error.message ?? error);
  }
}

const results = {};
for (const [chain, input] of Object.entries(INPUTS)) {
  const remote = new RemoteRunnable({ url: `${base}/${chain}/`, options: { timeout: 30000 } });
  const invoked = await remote.invoke(input);
  const batched = await remote.batch([input, input]);
  const streamed = [];
  for await (const chunk of await remote.stream(input)) streamed.push(chunk);
  // What a caller labels its runs with: tags, metadata, a run name (camelCase in JS), on every method.
  const labels = { tags: ["js"], metadata: { user: "ana" }, runName: "js-client" };
  const labelled = await remote.invoke(input, labels);
  const labelledBatch = await remote.batch([input], labels);
  const labelledStream = [];
  for await (const chunk of await remote.stream(input, labels)) labelledStream.push(chunk);
  results[chain] = {
    invoke: invoked,
    batch: batched,
    stream: streamed,
    labelled: { invoke: labelled, batch: labelledBatch, stream: labelledStream },
    // A recursion limit the server would not honour: refused with a 422 naming the key, not dropped silently.
    refused: await failure(remote.invoke(input, { recursionLimit: 5 })),
  };
}
// LangChain.js message objects as conversation turns (serialized as {type: "human"|"ai", content, ...}).
const conversation = new RemoteRunnable({ url: `${base}/conversation` });
results.messageObjects = await conversation.invoke({
  messages: [new HumanMessage("Hi, I am Ana."), new AIMessage("Hello Ana!"), new HumanMessage("Capital of France?")],
});
console.log(JSON.stringify(results));
