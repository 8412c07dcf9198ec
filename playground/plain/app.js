// The plain typewriter chat: no framework, no build. The chat's state and behaviour are shared with the React and
// Vue pages (../shared/chat.js, served at /playground/shared/); this file only renders the state into the DOM.
import {
  ChatState, EMPTY_TEXT, RECONNECTING_TEXT, answerStreaming, autosize, connectChat, errorText, formatStats,
  fromKeyboard, isThinking, navHtml, reasoningLabel, reasoningOpen, refocus, stoppedText,
} from '/playground/shared/chat.js';
import { renderMarkdown } from '/playground/shared/markdown.js';

const $ = (id) => document.getElementById(id);
const list = $('messages');
const input = $('input');
const send = $('send');
const stop = $('stop');
const systemPrompt = $('system-prompt');
const clear = $('clear');
const composer = $('composer');
const empty = $('empty');

$('nav').innerHTML = navHtml('plain');
empty.textContent = EMPTY_TEXT;

const chat = new ChatState();
const shown = new Map(); // message id → {message (as last rendered), el, text, html}

function element(tag, className, attrs = {}) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  return el;
}

function addMessage(message) {
  const el = element('article', `message ${message.role}`, { 'data-testid': 'message', 'data-role': message.role });
  const who = element('span', 'who');
  who.textContent = message.role === 'user' ? 'You' : 'Assistant';
  const body = element('div', 'body');
  // The user's text as typed (white-space: pre-wrap); the assistant's rendered as markdown.
  const text = message.role === 'assistant'
    ? element('div', 'text markdown', { 'data-testid': 'message-text' })
    : element('span', 'text', { 'data-testid': 'message-text' });
  body.append(text);
  el.append(who, body);
  list.append(el);
  const entry = { el, body, text };
  shown.set(message.id, entry);
  return entry;
}

/** The reply's thinking block (chat.js says when it is open and what it says), made when its first piece comes. */
function updateReasoning(entry, message) {
  if (!message.reasoning) return;
  if (!entry.reasoning) {
    const details = element('details', 'reasoning', { 'data-testid': 'reasoning' });
    const summary = element('summary', '', { 'data-testid': 'reasoning-summary' });
    // The state decides whether it is open: the browser's own toggle would be undone by the next render.
    summary.addEventListener('click', (event) => {
      event.preventDefault();
      chat.toggleReasoning(message.id);
    });
    const text = element('div', 'text markdown', { 'data-testid': 'reasoning-text', 'aria-live': 'off' });
    details.append(summary, text);
    entry.el.insertBefore(details, entry.body);
    entry.reasoning = { details, summary, text, html: null };
  }
  const { details, summary, text } = entry.reasoning;
  details.open = reasoningOpen(message);
  const label = reasoningLabel(message);
  if (summary.textContent !== label) summary.textContent = label;
  const html = renderMarkdown(message.reasoning, { streaming: isThinking(message) });
  if (entry.reasoning.html !== html) text.innerHTML = entry.reasoning.html = html;
}

/** Brings a message's element in line with its state (text and cursor, reconnecting, stats, error, stopped note). */
function update(entry, message) {
  const { el, text } = entry;
  entry.message = message;
  el.dataset.status = message.status;
  if (message.role === 'assistant') {
    updateReasoning(entry, message);
    // Sanitized markdown (markdown.js), with the cursor at the end of the text while it streams.
    const html = renderMarkdown(message.content, { streaming: answerStreaming(message) });
    if (entry.html !== html) text.innerHTML = entry.html = html;
  } else if (text.textContent !== message.content) {
    text.textContent = message.content; // exact text: white-space: pre-wrap
  }
  const reconnecting = el.querySelector('.reconnecting');
  if (message.reconnecting && !reconnecting) {
    const note = element('p', 'note reconnecting', { 'data-testid': 'reconnecting', role: 'status' });
    note.textContent = RECONNECTING_TEXT;
    el.append(note);
  } else if (!message.reconnecting && reconnecting) {
    reconnecting.remove();
  }
  if (message.status === 'stopped' && !el.querySelector('[data-testid=stopped]')) {
    const note = element('p', 'note', { 'data-testid': 'stopped' });
    note.textContent = stoppedText(message);
    el.append(note);
  }
  if (message.stats && !el.querySelector('.stats')) {
    const stats = element('p', 'stats', {
      'data-testid': 'stats', 'data-token-count': message.stats.token_count,
      'data-tokens-per-second': message.stats.tokens_per_second,
    });
    stats.textContent = formatStats(message.stats);
    el.append(stats);
  }
  if (message.error && !el.querySelector('.error')) {
    const error = element('p', `error error-${message.error.kind}`, {
      'data-testid': 'error', 'data-kind': message.error.kind, role: 'alert',
    });
    error.textContent = errorText(message.error);
    el.append(error);
  }
}

function render({ messages, streaming, systemPrompt: prompt, ready }) {
  if (systemPrompt.value !== prompt) systemPrompt.value = prompt;
  systemPrompt.disabled = streaming || !ready;
  input.disabled = streaming;
  send.disabled = streaming;
  clear.disabled = streaming;
  stop.disabled = !streaming;
  list.setAttribute('aria-busy', String(streaming));
  if (!messages.length) {
    shown.clear();
    list.replaceChildren(empty);
    return;
  }
  empty.remove();
  for (const message of messages) {
    const entry = shown.get(message.id) ?? addMessage(message);
    if (entry.message !== message) update(entry, message);
  }
}

async function sendMessage() {
  const text = input.value;
  if (!chat.canSend(text)) return;
  const keyboard = fromKeyboard(composer);
  wiring.resume();
  input.value = '';
  autosize(input);
  const finished = chat.send(text); // renders the exchange at once: Stop is enabled
  if (keyboard) stop.focus(); // the box and Send are disabled: keep keyboard users on the one useful control
  await finished;
  refocus(keyboard, { box: input, stop });
}

chat.subscribe(render);
const wiring = connectChat(chat, { list, box: input, send: sendMessage });
composer.addEventListener('submit', (event) => {
  event.preventDefault();
  sendMessage();
});
systemPrompt.addEventListener('input', () => chat.setSystemPrompt(systemPrompt.value));
stop.addEventListener('click', chat.stop);
clear.addEventListener('click', () => {
  chat.clear();
  input.focus();
});
chat.load();
