/**
 * The typewriter chat on the Vercel AI SDK's own client: `useChat` (@ai-sdk/react, pinned in package.json) holds the
 * conversation, sends it to POST /api/chat (the UI message stream) through `DefaultChatTransport`, assembles each
 * reply from its chunks (text and reasoning parts), stops (`stop`) and resumes (`resume: true` on load, which asks
 * GET /api/chat/{id}/stream for the chat's active run; `resumeStream` after a dropped connection). The server's
 * resume is a replay of the run from its start, which is what the SDK's transport assumes (`resumeStreamIsReplay`).
 *
 * What is this page's own: the markup (the same hooks and stylesheet as the other front ends), the chat's id and
 * messages kept in sessionStorage so that a reload resumes it, rejoining after a dropped connection (a bounded
 * number of `resumeStream` tries), Stop also cancelling the run on the server (the AI SDK's `stop` only closes the
 * connection, and the run outlives a connection so that it can be resumed), and a resumed reply showing what it
 * already showed until the SDK's rebuild of it from the replay has caught up (no blank flash). The reply is rendered by
 * shared/markdown.js (sanitized), the thinking block and the texts come from shared/chat.js.
 */
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport, generateId } from 'ai';
import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import {
  EMPTY_TEXT, RECONNECTING_TEXT, answerStreaming, autosize, errorText, followScroll, fromKeyboard, isSendKey,
  isThinking, navHtml, reasoningLabel, reasoningOpen, refocus, stoppedText,
} from '../../shared/chat.js';
import { copyCodeOnClick, renderMarkdown } from '../../shared/markdown.js';

const API = '/api/chat';
// Rejoining after a dropped connection: this many `resumeStream` tries, this far apart (then it is an error).
const REJOIN_DELAYS_MS = [250, 500, 1000, 1000, 2000, 2000, 3000, 3000, 5000, 5000];

// --- the chat kept for a reload (this tab, this page) -------------------------------------------------------------

const storeKey = () => `ai-sdk-chat:${location.pathname}`;

function kept() {
  try {
    const record = JSON.parse(sessionStorage.getItem(storeKey()) ?? 'null');
    return record && typeof record.id === 'string' && Array.isArray(record.messages) ? record : null;
  } catch {
    return null;
  }
}

function keep(record) {
  try {
    sessionStorage.setItem(storeKey(), JSON.stringify(record));
  } catch { /* no storage: a reload starts a new chat */ }
}

// --- what the SDK's state means for the page ----------------------------------------------------------------------

const textOf = (message, type) => message.parts.filter((p) => p.type === type).map((p) => p.text).join('');

/** A refusal (HTTP 4xx/5xx: the SDK's APICallError), an `error` chunk from the server, or the network. */
function errorKind(error) {
  if (typeof error?.statusCode === 'number') return 'http';
  return isDisconnect(error) ? 'network' : 'server';
}

/** A dropped connection, as the SDK itself tells one (a TypeError from fetch or from reading the body). */
function isDisconnect(error) {
  if (!(error instanceof TypeError)) return false;
  const message = error.message.toLowerCase();
  return message.includes('fetch') || message.includes('network') || message === 'load failed';
}

function usageOf(message) {
  const usage = message.metadata?.usage;
  const tokens = usage?.completion_tokens ?? usage?.output_tokens ?? usage?.outputTokens;
  return typeof tokens === 'number' ? { tokens } : null;
}

// --- the page ---------------------------------------------------------------------------------------------------

function Markdown({ text, streaming, testId = 'message-text', ...attrs }) {
  const html = useMemo(() => renderMarkdown(text, { streaming }), [text, streaming]);
  return <div className="text markdown" data-testid={testId} dangerouslySetInnerHTML={{ __html: html }} {...attrs} />;
}

function Reasoning({ view, onToggle }) {
  return (
    <details className="reasoning" data-testid="reasoning" open={reasoningOpen(view)}>
      <summary data-testid="reasoning-summary" onClick={(e) => { e.preventDefault(); onToggle(view.id); }}>
        {reasoningLabel(view)}
      </summary>
      <Markdown text={view.reasoning} streaming={isThinking(view)} testId="reasoning-text" aria-live="off" />
    </details>
  );
}

// `view`: {id, role, content, reasoning, reasoningOpen?, status: streaming|done|stopped|error, reconnecting?,
// usage?, error?} — what shared/chat.js's helpers read.
const Message = memo(function Message({ view, onToggleReasoning }) {
  const { role, content, reasoning, status, reconnecting, usage, error } = view;
  return (
    <article className={`message ${role}`} data-testid="message" data-role={role} data-status={status}
             data-message-id={view.id}>
      <span className="who">{role === 'user' ? 'You' : 'Assistant'}</span>
      {reasoning ? <Reasoning view={view} onToggle={onToggleReasoning} /> : null}
      <div className="body">
        {role === 'assistant'
          ? <Markdown text={content} streaming={answerStreaming(view)} />
          : <span className="text" data-testid="message-text">{content}</span>}
      </div>
      {reconnecting && <p className="note reconnecting" data-testid="reconnecting" role="status">{RECONNECTING_TEXT}</p>}
      {status === 'stopped' && <p className="note" data-testid="stopped">{stoppedText(view)}</p>}
      {usage && (
        <p className="stats" data-testid="stats" data-token-count={usage.tokens}>
          {`${usage.tokens} token${usage.tokens === 1 ? '' : 's'}`}
        </p>
      )}
      {error && (
        <p className={`error error-${error.kind}`} data-testid="error" data-kind={error.kind} role="alert">
          {errorText(error)}
        </p>
      )}
    </article>
  );
});

function Conversation({ record, onNewChat }) {
  const [systemPrompt, setSystemPrompt] = useState(record.systemPrompt ?? '');
  const [ready, setReady] = useState(record.systemPrompt !== undefined);
  const [stopped, setStopped] = useState(() => new Set(record.stopped ?? []));
  const [opened, setOpened] = useState({}); // the reader's choice per reply: thinking block open or closed
  const [reattaching, setReattaching] = useState(!!record.busy); // reloaded mid-reply: resuming the run
  const [tries, setTries] = useState(0); // resumeStream tries since the connection dropped
  const [halted, setHalted] = useState(false); // stopped: no rejoining until the next message
  const [input, setInput] = useState('');
  const systemRef = useRef(systemPrompt);
  systemRef.current = systemPrompt;
  const composingRef = useRef(false);
  const keyboardRef = useRef(false);
  const listRef = useRef(null);
  const inputRef = useRef(null);
  const stopRef = useRef(null);
  const composerRef = useRef(null);
  const followRef = useRef(null);
  const wasBusyRef = useRef(false);
  const shownRef = useRef(new Map()); // reply id → the text and thinking last shown

  const transport = useMemo(() => {
    class Transport extends DefaultChatTransport {
      async reconnectToStream(options) { // only to know when a resume on load found nothing to resume
        try {
          const stream = await super.reconnectToStream(options);
          if (stream === null) setReattaching(false);
          return stream;
        } catch (error) {
          setReattaching(false);
          throw error;
        }
      }
    }
    return new Transport({
      api: API,
      // The system prompt goes first, as a system message (the server's SYSTEM_PROMPT when there is none).
      prepareSendMessagesRequest: ({ id, messages, trigger, messageId, body }) => {
        const system = systemRef.current.trim()
          ? [{ id: 'system', role: 'system', parts: [{ type: 'text', text: systemRef.current }] }] : [];
        return { body: { ...body, id, messages: [...system, ...messages], trigger, messageId } };
      },
    });
  }, []);

  const { messages, status, error, sendMessage, stop, resumeStream, clearError } = useChat({
    id: record.id, messages: record.messages, transport, resume: true, throttle: 16,
  });

  const disconnected = status === 'error' && isDisconnect(error);
  const rejoining = disconnected && !halted && tries < REJOIN_DELAYS_MS.length;
  const busy = status === 'submitted' || status === 'streaming' || rejoining || reattaching;

  // The server's defaults (GET /chat/defaults): the system prompt field starts with its SYSTEM_PROMPT.
  useEffect(() => {
    if (ready) return undefined;
    let live = true;
    (async () => {
      let defaults = {};
      try {
        const response = await fetch('/chat/defaults', { headers: { Accept: 'application/json' }, cache: 'no-store' });
        if (response.ok) defaults = await response.json();
      } catch { /* sending will say so */ }
      if (live) {
        setSystemPrompt((current) => current || defaults.system_prompt || '');
        setReady(true);
      }
    })();
    return () => { live = false; };
  }, [ready]);

  // A dropped connection: resume the run (the SDK's resumeStream), a bounded number of times. A try ends when
  // resumeStream resolves: the replayed run streamed to its end, or the connection failed again.
  useEffect(() => {
    if (!rejoining) return undefined;
    let current = true;
    const timer = setTimeout(async () => {
      try {
        await resumeStream();
      } finally {
        if (current) setTries((n) => n + 1);
      }
    }, REJOIN_DELAYS_MS[tries]);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [rejoining, tries, resumeStream]);

  useEffect(() => { // streaming again: the rejoin (or the resume on load) worked
    if (status === 'streaming') {
      setTries(0);
      setReattaching(false);
    }
  }, [status]);

  // Kept for a reload: the chat's id, its messages, and whether a reply was on its way.
  useEffect(() => {
    keep({ id: record.id, messages, systemPrompt, stopped: [...stopped], busy });
  }, [record.id, messages, systemPrompt, stopped, busy]);

  // The log follows the reply; code blocks' Copy buttons; Esc stops.
  useEffect(() => {
    const list = listRef.current;
    followRef.current = followScroll(list);
    list.addEventListener('click', copyCodeOnClick);
    return () => {
      followRef.current.disconnect();
      list.removeEventListener('click', copyCodeOnClick);
    };
  }, []);

  const stopReply = async () => {
    if (!busy) return;
    const last = messages[messages.length - 1];
    const reply = last?.role === 'assistant' ? last : null;
    setHalted(true);
    setReattaching(false);
    if (reply) setStopped((ids) => new Set(ids).add(reply.id));
    // The SDK's stop closes the stream; the run, which outlives its connection so that it can be resumed, is
    // cancelled on the server: the chat's latest reply, known there by the chat's id even before its first chunk.
    fetch(`${API}/${encodeURIComponent(record.id)}/cancel`, { method: 'POST' })
      .catch(() => { /* it ends by itself when no one rejoins it */ });
    await stop();
    clearError(); // stopped while the connection was down: not an error
  };
  const stopRefFn = useRef(stopReply);
  stopRefFn.current = stopReply;
  useEffect(() => {
    const onKey = (event) => { if (event.key === 'Escape') stopRefFn.current(); };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);

  useLayoutEffect(() => autosize(inputRef.current), [input]);

  useEffect(() => { // keyboard users: Stop while streaming (the box and Send are disabled), the box afterwards
    if (busy) {
      if (keyboardRef.current) stopRef.current?.focus();
    } else if (wasBusyRef.current) {
      refocus(keyboardRef.current, { box: inputRef.current, stop: stopRef.current });
    }
    wasBusyRef.current = busy;
  }, [busy]);

  function send() {
    const text = input;
    if (!text.trim() || busy) return;
    keyboardRef.current = fromKeyboard(composerRef.current);
    followRef.current?.resume();
    setInput('');
    setHalted(false);
    setTries(0);
    sendMessage({ text });
  }

  // What each message shows: the SDK's parts, and where the reply stands.
  const lastIndex = messages.length - 1;
  const views = messages.filter((m) => m.role === 'user' || m.role === 'assistant').map((m) => {
    const isLast = m === messages[lastIndex];
    let state = 'done';
    if (stopped.has(m.id)) state = 'stopped';
    else if (isLast && m.role === 'assistant' && busy) state = 'streaming';
    else if (isLast && m.role === 'assistant' && status === 'error') state = 'error';
    let content = textOf(m, 'text');
    let reasoning = textOf(m, 'reasoning');
    if (m.role === 'assistant') {
      // A resume replays the run from its start, and the SDK rebuilds the reply from nothing: until the replay
      // has caught up with what was already shown (a prefix of it, so far), the reply keeps showing that.
      const shown = shownRef.current.get(m.id);
      const behind = shown && state === 'streaming' && shown.content.startsWith(content)
        && shown.reasoning.startsWith(reasoning)
        && shown.content.length + shown.reasoning.length > content.length + reasoning.length;
      if (behind) ({ content, reasoning } = shown);
      else shownRef.current.set(m.id, { content, reasoning });
    }
    return {
      id: m.id, role: m.role, content, reasoning,
      reasoningOpen: opened[m.id], status: state,
      reconnecting: state === 'streaming' && (rejoining || reattaching),
      usage: state === 'done' && m.role === 'assistant' ? usageOf(m) : null,
      error: state === 'error' ? { kind: errorKind(error), message: error.message } : null,
    };
  });
  const last = messages[lastIndex];
  if (last?.role === 'user' && (busy || status === 'error')) {
    // No reply yet: it is on its way, or the request was refused before one began.
    views.push({
      id: 'pending', role: 'assistant', content: '', reasoning: '', status: busy ? 'streaming' : 'error',
      reconnecting: rejoining || reattaching,
      error: busy ? null : { kind: errorKind(error), message: error.message },
    });
  }
  const toggleReasoning = (id) => {
    const view = views.find((v) => v.id === id);
    if (view) setOpened((o) => ({ ...o, [id]: !reasoningOpen(view) }));
  };

  return (
    <div className="app">
      <header className="top">
        <h1>Typewriter chat <span className="flavour">AI SDK</span></h1>
        <nav aria-label="Front ends and playgrounds" dangerouslySetInnerHTML={{ __html: NAV }} />
      </header>

      <div className="settings">
        <label htmlFor="system-prompt">System prompt</label>
        <input id="system-prompt" data-testid="system-prompt" type="text" autoComplete="off" value={systemPrompt}
               onChange={(e) => setSystemPrompt(e.target.value)} disabled={busy || !ready} />
        <button type="button" data-testid="clear" className="secondary" onClick={() => onNewChat(systemPrompt)} disabled={busy}>
          New chat
        </button>
      </div>

      <main className="messages" data-testid="messages" role="log" aria-live="polite" aria-label="Conversation"
            aria-busy={busy} tabIndex={0} ref={listRef}>
        {views.length === 0 && <p className="empty">{EMPTY_TEXT}</p>}
        {views.map((v) => <Message key={v.id} view={v} onToggleReasoning={toggleReasoning} />)}
      </main>

      <form className="composer" ref={composerRef} onSubmit={(e) => { e.preventDefault(); send(); }}>
        <label htmlFor="input" className="visually-hidden">Message</label>
        <textarea id="input" data-testid="input" rows={1} placeholder="输入消息…" autoComplete="off"
                  enterKeyHint="send" required ref={inputRef} value={input} disabled={busy}
                  onChange={(e) => setInput(e.target.value)}
                  onCompositionStart={() => { composingRef.current = true; }}
                  // Safari fires the committing Enter's keydown after compositionend: composing until the next task.
                  onCompositionEnd={() => { setTimeout(() => { composingRef.current = false; }); }}
                  onKeyDown={(e) => {
                    if (!isSendKey(e.nativeEvent, composingRef.current)) return;
                    e.preventDefault();
                    send();
                  }} />
        <button type="submit" data-testid="send" disabled={busy}>Send</button>
        <button type="button" data-testid="stop" className="stop" ref={stopRef} disabled={!busy}
                onClick={() => stopReply()}>Stop</button>
      </form>
    </div>
  );
}

// The shared nav (shared/chat.js) with this page after the other front ends, marked as the current one.
const NAV = navHtml('ai-sdk');

export default function AiSdkChat() {
  const [record, setRecord] = useState(() => kept() ?? { id: generateId(), messages: [] });
  const newChat = (systemPrompt) => {
    const fresh = { id: generateId(), messages: [], systemPrompt };
    keep(fresh);
    setRecord(fresh);
  };
  // A new chat is a new useChat (its own id, its own state): keyed by the chat's id.
  return <Conversation key={record.id} record={record} onNewChat={newChat} />;
}
