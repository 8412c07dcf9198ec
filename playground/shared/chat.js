/**
 * The chat itself, shared by the plain, React and Vue typewriter pages: its state and how a stream's outcome
 * changes it (`ChatState`), the behaviour of the message box and the log (`connectChat`: IME-safe Enter, Esc,
 * autosize, follow-scroll, Copy buttons), the texts the pages show and their nav. The pages keep only their
 * framework's glue: rendering the state, and handing their elements over once mounted.
 *
 * Layers: sse-client.js speaks to the server (one request, one outcome); markdown.js renders a reply; this module
 * is the conversation.
 */
import { DETACH, streamChat } from './sse-client.js';
import { copyCodeOnClick, tokensPerFrame } from './markdown.js';

// --- state -----------------------------------------------------------------------------------------------------

/** The conversation as the server wants it: the turns that reached the model, oldest first, then the new one. */
export function conversationFor(messages, text) {
  const turns = messages
    .filter((m) => m.inHistory !== false && (m.role === 'user' || m.role === 'assistant'))
    .map((m) => ({ role: m.role, content: m.content }));
  return [...turns, { role: 'user', content: text }];
}

/**
 * What a stream's outcome (sse-client.js) makes of an exchange, as changes to its two messages: the reply's status
 * and its stats or error; and whether the exchange stays in the history sent with later messages — a failed one
 * is not sent again, a stopped one is, with its partial reply (what the model said), unless nothing came at all.
 * The thinking (`reasoningText`) is never sent back, and a reply that was all thinking counts as nothing; it is
 * only checked against `done`'s `full_reasoning`, as the answer is against `full_response`.
 */
export function settle(outcome, replyText, reasoningText = '') {
  if (outcome.done && replyText !== outcome.done.full_response) console.warn('streamed text differs from full_response');
  if (outcome.done && typeof outcome.done.full_reasoning === 'string' && reasoningText !== outcome.done.full_reasoning) {
    console.warn('streamed reasoning differs from full_reasoning');
  }
  if (outcome.status === 'done') return { reply: { status: 'done', stats: outcome.done }, user: null };
  const forget = (outcome.status === 'error' || !replyText) ? { inHistory: false } : null;
  // A stopped run's summary (the tokens it used until the stop) is shown like a finished one's.
  const reply = outcome.status === 'stopped' ? { status: 'stopped', ...(outcome.done && { stats: outcome.done }) }
    : { status: 'error', error: outcome };
  return { reply: { ...reply, ...forget }, user: forget };
}

/**
 * The reply in flight, kept in sessionStorage (this tab, this page) so that a reload re-attaches to its run:
 * {runId, systemPrompt, messages (the conversation before the reply, the user's turn last)}. Written once the run
 * id is known, removed when the reply ends. Storage may be full or off: then a reload starts a new chat, as it
 * did before runs.
 */
const runKey = () => `typewriter-chat:run:${location.pathname}`;

function keepRun(record) {
  try {
    sessionStorage.setItem(runKey(), JSON.stringify(record));
  } catch { /* no storage: a reload will not re-attach */ }
}

function keptRun() {
  try {
    const record = JSON.parse(sessionStorage.getItem(runKey()) ?? 'null');
    return record && typeof record.runId === 'string' && Array.isArray(record.messages) ? record : null;
  } catch {
    return null;
  }
}

function forgetRun() {
  try {
    sessionStorage.removeItem(runKey());
  } catch { /* nothing kept */ }
}

let nextId = 1;

/**
 * One chat: `state` is {messages, streaming, systemPrompt, ready}, where a message is
 * {id, role, content, reasoning?, reasoningOpen?, status: done|streaming|stopped|error, reconnecting?, inHistory?,
 * stats?, error?}; `reasoning` is the model's thinking (`event: reasoning`, shown apart from the answer and never
 * sent back: `content` is the answer alone), `reasoningOpen` the reader's choice to open or close it (unset: the
 * page's, see reasoningOpen below); `reconnecting` is true while the reply's connection is down and the client is
 * rejoining its run. Every change replaces
 * `state` (and the messages it changes) rather than editing them, and tells the subscribers: React reads it with
 * useSyncExternalStore, Vue through a shallowRef, the plain page re-renders the messages whose object changed.
 */
export class ChatState {
  state = { messages: [], streaming: false, systemPrompt: '', ready: false };

  #listeners = new Set();

  #controller = null; // the AbortController of the reply in flight

  subscribe = (listener) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  getState = () => this.state;

  #set(change) {
    this.state = { ...this.state, ...change };
    for (const listener of this.#listeners) listener(this.state);
  }

  #changed(changes) { // the messages with {id: change} applied; the others keep their identity
    return this.state.messages.map((m) => (changes[m.id] ? { ...m, ...changes[m.id] } : m));
  }

  /**
   * What the page starts from. A reply that was streaming when the page was reloaded: the conversation as it was
   * and the reply re-attached to its run (replayed from its start). Otherwise the server's defaults
   * (GET /chat/defaults, same origin): the system prompt field starts with the server's SYSTEM_PROMPT, never a copy
   * of it. `ready` once they came; if they cannot, the field stays empty, and an empty system prompt is the
   * server's default anyway.
   */
  async load() {
    this.reattach();
    let defaults = {};
    try {
      const response = await fetch('/chat/defaults', { headers: { Accept: 'application/json' }, cache: 'no-store' });
      if (response.ok) defaults = await response.json();
    } catch { /* the server is not reachable: sending will say so */ }
    if (!this.state.ready) this.#set({ systemPrompt: defaults.system_prompt ?? '', ready: true });
  }

  setSystemPrompt = (systemPrompt) => this.#set({ systemPrompt });

  canSend(text) {
    return text.trim() !== '' && !this.#controller;
  }

  /** Streams the reply to `text`. Resolves once it has ended (done, stopped or failed); false if nothing was sent. */
  async send(text) {
    if (!this.canSend(text)) return false;
    const history = conversationFor(this.state.messages, text);
    const user = { id: nextId++, role: 'user', content: text, status: 'done' };
    const reply = { id: nextId++, role: 'assistant', content: '', reasoning: '', status: 'streaming' };
    const before = this.state.messages; // kept with the run id: what a reload shows again
    const { systemPrompt } = this.state;
    this.#set({ messages: [...before, user, reply], streaming: true });
    await this.#follow(user, reply, {
      body: { messages: history, system_prompt: systemPrompt },
      onRun: (runId) => keepRun({ runId, systemPrompt, messages: [...before, user] }),
    });
    return true;
  }

  /** The reply that was streaming when the page was reloaded (sessionStorage), if any, re-attached to its run. */
  reattach() {
    const record = keptRun();
    if (!record || this.#controller) return false;
    const messages = record.messages.map((m) => ({ ...m, id: nextId++ }));
    const user = messages[messages.length - 1];
    const reply = { id: nextId++, role: 'assistant', content: '', reasoning: '', status: 'streaming',
                    reconnecting: true };
    this.#set({ messages: [...messages, reply], streaming: true, systemPrompt: record.systemPrompt ?? '', ready: true });
    this.#follow(user, reply, { runId: record.runId });
    return true;
  }

  /** Streams into `reply` until the run ends, then settles the exchange; a detached one is left as it is. */
  async #follow(user, reply, request) {
    const controller = new AbortController();
    this.#controller = controller;
    // The whole reply is rendered again on each update: tokens are handed on at most once a frame. The thinking
    // comes first: what is left of it is handed on before the answer's first piece, which closes its block.
    const thoughts = tokensPerFrame((more) => {
      this.#set({ messages: this.#changed({ [reply.id]: { reasoning: (this.#find(reply).reasoning ?? '') + more } }) });
    });
    const tokens = tokensPerFrame((more) => {
      thoughts.flush();
      this.#set({ messages: this.#changed({ [reply.id]: { content: this.#find(reply).content + more } }) });
    });
    const outcome = await streamChat({
      ...request,
      signal: controller.signal,
      onToken: tokens.push,
      onReasoning: thoughts.push,
      onConnection: (state) => {
        thoughts.flush();
        tokens.flush();
        this.#set({ messages: this.#changed({ [reply.id]: { reconnecting: state === 'reconnecting' } }) });
      },
    });
    thoughts.flush();
    tokens.flush();
    if (this.#controller === controller) this.#controller = null;
    if (outcome.status === 'detached') return; // the page is going away; its run waits for the next one
    forgetRun();
    const { content, reasoning } = this.#find(reply);
    const changes = settle(outcome, content, reasoning);
    changes.reply = { ...changes.reply, reconnecting: false };
    this.#set({ streaming: false, messages: this.#changed({ [user.id]: changes.user, [reply.id]: changes.reply }) });
  }

  #find(message) { // the message as it is now (or as it was, once "New chat" has removed it)
    return this.state.messages.find((m) => m.id === message.id) ?? message;
  }

  /** The reader opens or closes a reply's thinking block (its summary clicked, or Enter/Space on it): from then on
   * the block stays as they left it. */
  toggleReasoning = (id) => {
    const message = this.state.messages.find((m) => m.id === id);
    if (message) this.#set({ messages: this.#changed({ [id]: { reasoningOpen: !reasoningOpen(message) } }) });
  };

  /** Stop (button, Esc): the run is cancelled; the reply ends with what the model said until then. */
  stop = () => this.#controller?.abort();

  /** Leaving (a reload, the component unmounting): the connection is closed, the run goes on for its grace period
   * and the page that comes next (after a reload) re-attaches to it. */
  detach = () => {
    this.#controller?.abort(DETACH);
    this.#controller = null; // at once: a remount (React's StrictMode) re-attaches before the stream has ended
  };

  clear() {
    this.stop();
    this.#set({ messages: [] });
  }
}

// --- what the pages show -----------------------------------------------------------------------------------------

export const EMPTY_TEXT = 'Ask anything. The reply streams in token by token; earlier turns are sent with each '
  + 'message. Enter sends, Shift+Enter adds a line, Esc stops.';

export const stoppedText = (message) => (message.content ? 'Stopped: partial reply'
  : message.reasoning ? 'Stopped while thinking' : 'Stopped before the first token');

/**
 * The model's thinking, shown above its answer in a <details> block, when the reply has any (`reasoning`):
 * - while it streams and no answer has come yet (`isThinking`), the block is open, says THINKING_TEXT, and the
 *   typing cursor is in it (not in the empty answer below);
 * - the answer's first token closes it ("Thought"); the reader can open it again, and close it, at any time
 *   (`ChatState.toggleReasoning`: the page's summary click is prevented, so the state alone says whether it is open);
 * - a reply that ended with thinking and no answer (stopped, failed) keeps it open: it is all there is.
 * It is rendered as the answer is (markdown.js: sanitized, raw HTML shown as text). It is not announced as it
 * grows (aria-live="off" inside the log): the reader hears "Thinking…", then the answer, and can open the block.
 */
export const THINKING_TEXT = 'Thinking…';
export const THOUGHT_TEXT = 'Thought';
export const isThinking = (message) => message.status === 'streaming' && !!message.reasoning && !message.content;
export const reasoningOpen = (message) => message.reasoningOpen ?? !message.content;
export const reasoningLabel = (message) => (isThinking(message) ? THINKING_TEXT : THOUGHT_TEXT);
/** Whether the answer is shown as streaming (settled markdown, the cursor at its end): not while the cursor is in
 * the thinking block. */
export const answerStreaming = (message) => message.status === 'streaming' && !isThinking(message);

/** Shown while a reply's connection is down and the page is rejoining its run (and only then). */
export const RECONNECTING_TEXT = 'Connection lost: reconnecting…';

/** "20 tokens · 1234.5 tokens/s · 0.02 s" from a `done` payload. */
export function formatStats(done) {
  const rate = Number(done.tokens_per_second);
  const parts = [`${done.token_count} token${done.token_count === 1 ? '' : 's'}`,
                 `${rate >= 100 ? rate.toFixed(0) : rate.toFixed(1)} tokens/s`];
  if (typeof done.duration === 'number') parts.push(`${done.duration.toFixed(2)} s`);
  return parts.join(' · ');
}

/** The inline text of a failed reply: a server error event, a refusal, a connection problem each read differently. */
export const ERROR_LABELS = {
  server: 'Server error',
  http: 'Request refused',
  network: 'Connection problem',
};

export function errorText(error) {
  return `${ERROR_LABELS[error.kind] ?? 'Error'}: ${error.message}`;
}

const FRONT_ENDS = [['plain', '/playground/', 'Plain'], ['react', '/playground/react/', 'React'],
  ['vue', '/playground/vue/', 'Vue'], ['ai-sdk', '/playground/ai-sdk/', 'AI SDK']];
const LANGSERVE = [['/single-turn/playground/', 'single-turn'], ['/system-prompt/playground/', 'system-prompt'],
  ['/conversation/playground/', 'conversation (chat)']];

/** The inside of each page's <nav>: the four front ends (`current` marked), LangServe's playgrounds, the API docs. */
export function navHtml(current) {
  const link = (href, label, attrs = '') => `<a href="${href}"${attrs}>${label}</a>`;
  return [
    ...FRONT_ENDS.map(([name, href, label]) => link(href, label, name === current ? ' aria-current="page"' : '')),
    '<span class="sep" aria-hidden="true">|</span>',
    `<span class="langserve">LangServe: ${LANGSERVE.map(([href, label]) => link(href, label)).join(' ')}</span>`,
    link('/docs', 'API docs'),
  ].join('\n');
}

// --- behaviour of the elements -------------------------------------------------------------------------------------

/**
 * Whether a keydown in the message box should send: Enter without Shift, and never an Enter that commits an IME
 * composition (Chinese, Japanese, …). Browsers disagree on how that Enter looks: `isComposing` is true in most,
 * Safari sends it after `compositionend` with keyCode 229, so the caller also tracks compositionstart/end.
 */
export function isSendKey(event, composing = false) {
  return event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229 && !composing;
}

/** Grows the message box with its text, up to its CSS max-height. Call it when the text changes. */
export function autosize(box) {
  box.style.height = 'auto';
  box.style.height = `${Math.min(box.scrollHeight, parseFloat(getComputedStyle(box).maxHeight) || Infinity)}px`;
}

/**
 * The log follows what is added to it (the growing reply), unless the reader has scrolled up: more than `slack`
 * pixels from the end, and above where this last scrolled to. Scrolling back to the end follows again, and so
 * does `resume()` (a new exchange). Decided at each change, from where the log is then: no scroll event can come
 * too late and pull the reader back down.
 */
export function followScroll(list, slack = 40) {
  let ours = 0; // scrollTop where this last put it
  const toEnd = () => {
    list.scrollTop = list.scrollHeight;
    ours = list.scrollTop;
  };
  const observer = new MutationObserver(() => {
    const movedUp = list.scrollTop < ours - 1 && list.scrollHeight - list.scrollTop - list.clientHeight >= slack;
    if (!movedUp) toEnd();
  });
  observer.observe(list, { childList: true, subtree: true, characterData: true });
  return { resume: toEnd, disconnect: () => observer.disconnect() };
}

/**
 * Wires a page's elements to its chat, once they are mounted: Enter in `box` calls `send()` (Shift+Enter adds a
 * line, an IME's committing Enter does neither), the box grows as it is typed in, Esc stops the reply, leaving the
 * page detaches it (a reload re-attaches; a closed tab's run ends after its grace period), the log follows it
 * (followScroll) and its code blocks' Copy buttons work. Returns {resume, disconnect}.
 */
export function connectChat(chat, { list, box, send }) {
  let composing = false;
  const listeners = [
    [box, 'compositionstart', () => { composing = true; }],
    // Safari fires the committing Enter's keydown after compositionend: stay "composing" until the next task.
    [box, 'compositionend', () => { setTimeout(() => { composing = false; }); }],
    [box, 'keydown', (event) => {
      if (!isSendKey(event, composing)) return;
      event.preventDefault();
      send();
    }],
    [box, 'input', () => autosize(box)],
    [list, 'click', copyCodeOnClick], // event delegation: the rendered markdown carries no handlers
    [document, 'keydown', (event) => { if (event.key === 'Escape') chat.stop(); }],
    [window, 'pagehide', chat.detach],
    // Back from the back/forward cache: the run is still there, for its grace period.
    [window, 'pageshow', (event) => { if (event.persisted) chat.reattach(); }],
  ];
  for (const [target, type, listener] of listeners) target.addEventListener(type, listener);
  const follow = followScroll(list);
  return {
    resume: follow.resume,
    disconnect() {
      follow.disconnect();
      for (const [target, type, listener] of listeners) target.removeEventListener(type, listener);
    },
  };
}

/** Whether a reply is asked for from the keyboard (Enter in the box, or Send by keyboard): focus then goes to Stop. */
export const fromKeyboard = (composer) => composer.contains(document.activeElement);

/** After a reply: back to the message box if it was asked for from the keyboard or the focus was lost (with the
 * disabled Stop, or nowhere), not if the reader has moved on. */
export function refocus(keyboard, { box, stop }) {
  if (keyboard || [document.body, null, stop].includes(document.activeElement)) box.focus();
}
