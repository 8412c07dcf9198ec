/**
 * The tutorial's React typewriter chat (section 4.1), rewritten: fetch-based streaming through the shared client
 * (POST with the conversation so far, Stop that cancels the generation, server errors told apart from dropped
 * connections, the stream always closed), IME-safe Enter, auto-scroll, accessible controls.
 */
import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import {
  DEFAULT_SYSTEM_PROMPT, conversationFor, errorText, formatStats, isSendKey, streamChat,
} from '../../sse-client.js';
import { copyCodeOnClick, renderMarkdown, tokensPerFrame } from '../../markdown.js';

let nextId = 1;

// The assistant's reply as sanitized markdown (../../markdown.js), the cursor inside it while it streams.
function Markdown({ text, streaming }) {
  const html = useMemo(() => renderMarkdown(text, { streaming }), [text, streaming]);
  return <div className="text markdown" data-testid="message-text" dangerouslySetInnerHTML={{ __html: html }} />;
}

const Message = memo(function Message({ message }) {
  const { role, content, status, stats, error } = message;
  return (
    <article className={`message ${role}`} data-testid="message" data-role={role} data-status={status}>
      <span className="who">{role === 'user' ? 'You' : 'Assistant'}</span>
      <div className="body">
        {role === 'assistant'
          ? <Markdown text={content} streaming={status === 'streaming'} />
          : <span className="text" data-testid="message-text">{content}</span>}
      </div>
      {status === 'stopped' && (
        <p className="note" data-testid="stopped">
          {content ? 'Stopped: partial reply' : 'Stopped before the first token'}
        </p>
      )}
      {stats && (
        <p className="stats" data-testid="stats" data-token-count={stats.token_count}
           data-tokens-per-second={stats.tokens_per_second}>{formatStats(stats)}</p>
      )}
      {error && (
        <p className={`error error-${error.kind}`} data-testid="error" data-kind={error.kind} role="alert">
          {errorText(error)}
        </p>
      )}
    </article>
  );
});

export default function TokenStreamChat() {
  const [messages, setMessages] = useState([]);
  const [input, setInput] = useState('');
  const [systemPrompt, setSystemPrompt] = useState(DEFAULT_SYSTEM_PROMPT);
  const [streaming, setStreaming] = useState(false);
  const controllerRef = useRef(null);
  const composingRef = useRef(false);
  const keyboardRef = useRef(false); // the reply was asked for from the keyboard (Enter in the box, or Send)
  const stickRef = useRef(true); // follow the reply unless the reader scrolled up
  const listRef = useRef(null);
  const inputRef = useRef(null);
  const stopRef = useRef(null);
  const composerRef = useRef(null);
  const wasStreamingRef = useRef(false);

  useEffect(() => () => controllerRef.current?.abort(), []); // unmounting ends the stream (and the generation)

  useEffect(() => {
    const onKey = (event) => { if (event.key === 'Escape') controllerRef.current?.abort(); };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);

  useLayoutEffect(() => {
    if (stickRef.current && listRef.current) listRef.current.scrollTop = listRef.current.scrollHeight;
  }, [messages]);

  useLayoutEffect(() => { // grow the message box with its text, up to its max-height
    const box = inputRef.current;
    box.style.height = 'auto';
    box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  }, [input]);

  useEffect(() => { // keyboard users: Stop while streaming, the message box afterwards
    if (streaming) {
      if (keyboardRef.current) stopRef.current?.focus(); // the box and Send are disabled
    } else if (wasStreamingRef.current
               && (keyboardRef.current || [document.body, null, stopRef.current].includes(document.activeElement))) {
      inputRef.current?.focus(); // back to the box, unless the reader has moved on
    }
    wasStreamingRef.current = streaming;
  }, [streaming]);

  const update = (id, change) => setMessages((prev) => prev.map((m) => (m.id === id ? change(m) : m)));

  async function sendMessage() {
    const text = input;
    if (!text.trim() || controllerRef.current) return;
    const history = conversationFor(messages, text);
    const userId = nextId++;
    const replyId = nextId++;
    const controller = new AbortController();
    controllerRef.current = controller;
    keyboardRef.current = composerRef.current.contains(document.activeElement);
    stickRef.current = true;
    setMessages((prev) => [...prev,
      { id: userId, role: 'user', content: text, status: 'done' },
      { id: replyId, role: 'assistant', content: '', status: 'streaming' }]);
    setInput('');
    setStreaming(true);

    // The whole reply is rendered again on each update: tokens are handed on at most once a frame.
    const tokens = tokensPerFrame((more) => update(replyId, (m) => ({ ...m, content: m.content + more })));
    const outcome = await streamChat({
      body: { messages: history, system_prompt: systemPrompt },
      signal: controller.signal,
      onToken: tokens.push,
    });
    tokens.flush();

    controllerRef.current = null;
    setMessages((prev) => prev.map((m) => {
      if (m.id === replyId) {
        if (outcome.status === 'done') return { ...m, status: 'done', stats: outcome.done };
        if (outcome.status === 'stopped') {
          return { ...m, status: 'stopped', inHistory: m.content !== '' };
        }
        return { ...m, status: 'error', error: outcome, inHistory: false };
      }
      if (m.id === userId) {
        // A failed exchange is not sent again; a stopped one is, with its partial reply (unless it was empty).
        const replyText = prev.find((r) => r.id === replyId).content;
        if (outcome.status === 'error' || (outcome.status === 'stopped' && !replyText)) {
          return { ...m, inHistory: false };
        }
      }
      return m;
    }));
    setStreaming(false);
  }

  function onKeyDown(event) {
    // Not onKeyPress (deprecated, and it fires for the Enter that commits an IME composition).
    if (!isSendKey(event.nativeEvent, composingRef.current)) return;
    event.preventDefault();
    sendMessage();
  }

  function onScroll() {
    const list = listRef.current;
    stickRef.current = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  function newChat() {
    setMessages([]);
    inputRef.current?.focus();
  }

  return (
    <div className="app">
      <header className="top">
        <h1>Typewriter chat <span className="flavour">React</span></h1>
        <nav aria-label="Front ends and playgrounds">
          <a href="/playground/">Plain</a>
          <a href="/playground/react/" aria-current="page">React</a>
          <a href="/playground/vue/">Vue</a>
          <span className="sep" aria-hidden="true">|</span>
          <span className="langserve">LangServe:
            <a href="/single-turn/playground/">single-turn</a>
            <a href="/system-prompt/playground/">system-prompt</a>
            <a href="/conversation/playground/">conversation (chat)</a></span>
          <a href="/docs">API docs</a>
        </nav>
      </header>

      <div className="settings">
        <label htmlFor="system-prompt">System prompt</label>
        <input id="system-prompt" data-testid="system-prompt" type="text" autoComplete="off" value={systemPrompt}
               onChange={(e) => setSystemPrompt(e.target.value)} disabled={streaming} />
        <button type="button" data-testid="clear" className="secondary" onClick={newChat} disabled={streaming}>
          New chat
        </button>
      </div>

      <main className="messages" data-testid="messages" role="log" aria-live="polite" aria-label="Conversation"
            aria-busy={streaming} tabIndex={0} ref={listRef} onScroll={onScroll}
            onClick={copyCodeOnClick /* the Copy buttons of code blocks */}>
        {messages.length === 0 && (
          <p className="empty">Ask anything. The reply streams in token by token; earlier turns are sent with each
            message. Enter sends, Shift+Enter adds a line, Esc stops.</p>
        )}
        {messages.map((m) => <Message key={m.id} message={m} />)}
      </main>

      <form className="composer" ref={composerRef} onSubmit={(e) => { e.preventDefault(); sendMessage(); }}>
        <label htmlFor="input" className="visually-hidden">Message</label>
        <textarea id="input" data-testid="input" rows={1} placeholder="输入消息…" autoComplete="off"
                  enterKeyHint="send" required ref={inputRef} value={input} disabled={streaming}
                  onChange={(e) => setInput(e.target.value)} onKeyDown={onKeyDown}
                  onCompositionStart={() => { composingRef.current = true; }}
                  // Safari fires the committing Enter's keydown after compositionend: clear on the next task.
                  onCompositionEnd={() => { setTimeout(() => { composingRef.current = false; }); }} />
        <button type="submit" data-testid="send" disabled={streaming}>Send</button>
        <button type="button" data-testid="stop" className="stop" ref={stopRef} disabled={!streaming}
                onClick={() => controllerRef.current?.abort()}>Stop</button>
      </form>
    </div>
  );
}
