/**
 * The chat itself, shared by the plain, React and Vue typewriter pages: its state and how a stream's outcome
 * changes it (`ChatState`), the behaviour of the message box and the log (`connectChat`: IME-safe Enter, Esc,
 * autosize, follow-scroll, Copy buttons), the texts the pages show and their nav. The pages keep only their
 * framework's glue: rendering the state, and handing their elements over once mounted.
 *
 * Layers: sse-client.js speaks to the server (one request, one outcome); markdown.js renders a reply; this module
 * is the conversation.
 */
import { streamChat } from './sse-client.js';
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
 */
export function settle(outcome, replyText) {
  if (outcome.status === 'done') {
    if (replyText !== outcome.done.full_response) console.warn('streamed text differs from full_response');
    return { reply: { status: 'done', stats: outcome.done }, user: null };
  }
  const forget = (outcome.status === 'error' || !replyText) ? { inHistory: false } : null;
  const reply = outcome.status === 'stopped' ? { status: 'stopped' } : { status: 'error', error: outcome };
  return { reply: { ...reply, ...forget }, user: forget };
}

let nextId = 1;

/**
 * One chat: `state` is {messages, streaming, systemPrompt, ready}, where a message is
 * {id, role, content, status: done|streaming|stopped|error, inHistory?, stats?, error?}. Every change replaces
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
   * The server's defaults (GET /chat/defaults, same origin): the system prompt field starts with the server's
   * SYSTEM_PROMPT, never a copy of it. `ready` once they came; if they cannot, the field stays empty, and an empty
   * system prompt is the server's default anyway.
   */
  async load() {
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
    let reply = { id: nextId++, role: 'assistant', content: '', status: 'streaming' };
    const controller = new AbortController();
    this.#controller = controller;
    this.#set({ messages: [...this.state.messages, user, reply], streaming: true });

    // The whole reply is rendered again on each update: tokens are handed on at most once a frame.
    const tokens = tokensPerFrame((more) => {
      this.#set({ messages: this.#changed({ [reply.id]: { content: this.#find(reply).content + more } }) });
    });
    const outcome = await streamChat({
      body: { messages: history, system_prompt: this.state.systemPrompt },
      signal: controller.signal,
      onToken: tokens.push,
    });
    tokens.flush();

    this.#controller = null;
    reply = this.#find(reply);
    const changes = settle(outcome, reply.content);
    this.#set({ streaming: false, messages: this.#changed({ [user.id]: changes.user, [reply.id]: changes.reply }) });
    return true;
  }

  #find(message) { // the message as it is now (or as it was, once "New chat" has removed it)
    return this.state.messages.find((m) => m.id === message.id) ?? message;
  }

  /** Stop (button, Esc, leaving the page): the request is aborted and the server cancels the generation. */
  stop = () => this.#controller?.abort();

  clear() {
    this.stop();
    this.#set({ messages: [] });
  }
}

// --- what the pages show -----------------------------------------------------------------------------------------

export const EMPTY_TEXT = 'Ask anything. The reply streams in token by token; earlier turns are sent with each '
  + 'message. Enter sends, Shift+Enter adds a line, Esc stops.';

export const stoppedText = (message) => (message.content ? 'Stopped: partial reply' : 'Stopped before the first token');

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
  ['vue', '/playground/vue/', 'Vue']];
const LANGSERVE = [['/single-turn/playground/', 'single-turn'], ['/system-prompt/playground/', 'system-prompt'],
  ['/conversation/playground/', 'conversation (chat)']];

/** The inside of each page's <nav>: the three front ends (`current` marked), LangServe's playgrounds, the API docs. */
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
 * line, an IME's committing Enter does neither), the box grows as it is typed in, Esc and leaving the page stop the
 * reply, the log follows it (followScroll) and its code blocks' Copy buttons work. Returns {resume, disconnect}.
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
    [window, 'pagehide', chat.stop],
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
