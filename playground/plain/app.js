// The plain typewriter chat: no framework, no build. The React and Vue pages do the same with the same client.
import {
  DEFAULT_SYSTEM_PROMPT, conversationFor, errorText, formatStats, isSendKey, streamChat,
} from './sse-client.js';
import { copyCodeOnClick, renderMarkdown, tokensPerFrame } from './markdown.js';

const $ = (id) => document.getElementById(id);
const list = $('messages');
const input = $('input');
const send = $('send');
const stop = $('stop');
const systemPrompt = $('system-prompt');
const clear = $('clear');
const composer = $('composer');

systemPrompt.value = DEFAULT_SYSTEM_PROMPT;

/** {role, content, status: done|streaming|stopped|error, inHistory, stats?, error?, el, text, html} */
let messages = [];
let controller = null; // the AbortController of the reply in flight
let composing = false;

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function scrollToEnd() {
  list.scrollTop = list.scrollHeight;
}

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
  message.el = el;
  message.text = text;
  messages.push(message);
  $('empty')?.remove();
  list.append(el);
  update(message);
  scrollToEnd();
  return message;
}

/** Brings a message's element in line with its state (text and cursor, stats, error, stopped note). */
function update(message) {
  const { el, text } = message;
  el.dataset.status = message.status;
  if (message.role === 'assistant') {
    // Sanitized markdown (markdown.js), with the cursor at the end of the text while it streams.
    const html = renderMarkdown(message.content, { streaming: message.status === 'streaming' });
    if (message.html !== html) text.innerHTML = message.html = html;
  } else if (text.textContent !== message.content) {
    text.textContent = message.content; // exact text: white-space: pre-wrap
  }
  if (message.status === 'stopped' && !el.querySelector('.note')) {
    const note = element('p', 'note', { 'data-testid': 'stopped' });
    note.textContent = message.content ? 'Stopped: partial reply' : 'Stopped before the first token';
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

function setStreaming(streaming) {
  input.disabled = streaming;
  send.disabled = streaming;
  stop.disabled = !streaming;
  systemPrompt.disabled = streaming;
  clear.disabled = streaming;
  list.setAttribute('aria-busy', String(streaming));
}

async function sendMessage() {
  const text = input.value;
  if (!text.trim() || controller) return;
  const history = conversationFor(messages, text);
  const fromKeyboard = composer.contains(document.activeElement); // Enter in the box, or Send by keyboard
  const user = addMessage({ role: 'user', content: text, status: 'done' });
  const reply = addMessage({ role: 'assistant', content: '', status: 'streaming' });
  input.value = '';
  resize();
  controller = new AbortController();
  setStreaming(true);
  if (fromKeyboard) stop.focus(); // the box and Send are disabled: keep keyboard users on the one useful control

  const tokens = tokensPerFrame((text) => { // the whole reply is rendered again: at most once a frame
    const stick = nearBottom();
    reply.content += text;
    update(reply);
    if (stick) scrollToEnd(); // follow the reply unless the reader has scrolled up
  });
  const outcome = await streamChat({
    body: { messages: history, system_prompt: systemPrompt.value },
    signal: controller.signal,
    onToken: tokens.push,
  });
  tokens.flush();

  const stick = nearBottom();
  if (outcome.status === 'done') {
    reply.status = 'done';
    reply.stats = outcome.done;
    if (reply.content !== outcome.done.full_response) console.warn('streamed text differs from full_response');
  } else if (outcome.status === 'stopped') {
    reply.status = 'stopped';
    // The partial reply is what the model said: it stays in the history, unless nothing came at all.
    if (!reply.content) user.inHistory = reply.inHistory = false;
  } else {
    reply.status = 'error';
    reply.error = outcome;
    user.inHistory = reply.inHistory = false; // a failed exchange is not sent again
  }
  update(reply);
  if (stick) scrollToEnd();
  controller = null;
  setStreaming(false);
  const focusLost = [document.body, null, stop].includes(document.activeElement);
  if (fromKeyboard || focusLost) input.focus(); // back to the box, unless the reader has moved on
}

function stopStreaming() {
  controller?.abort();
}

function resize() {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

composer.addEventListener('submit', (event) => {
  event.preventDefault();
  sendMessage();
});
input.addEventListener('compositionstart', () => { composing = true; });
// Safari fires the committing Enter's keydown after compositionend: stay "composing" until the next task.
input.addEventListener('compositionend', () => { setTimeout(() => { composing = false; }); });
input.addEventListener('keydown', (event) => {
  if (!isSendKey(event, composing)) return; // Shift+Enter adds a line; an IME's Enter commits its composition
  event.preventDefault();
  sendMessage();
});
input.addEventListener('input', resize);
stop.addEventListener('click', stopStreaming);
list.addEventListener('click', copyCodeOnClick); // the Copy buttons of code blocks
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && controller) stopStreaming();
});
clear.addEventListener('click', () => {
  messages = [];
  list.replaceChildren();
  input.focus();
});
window.addEventListener('pagehide', stopStreaming);
