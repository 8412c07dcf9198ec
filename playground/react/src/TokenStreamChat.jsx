/**
 * The tutorial's React typewriter chat (section 4.1), rewritten. The chat itself — state, streaming, Stop, IME-safe
 * Enter, follow-scroll — is shared/chat.js, the same for the three pages; this is React's glue: the markup, the
 * state read through useSyncExternalStore, and the elements handed to connectChat once mounted.
 */
import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';
import {
  ChatState, EMPTY_TEXT, RECONNECTING_TEXT, answerStreaming, autosize, connectChat, errorText, formatStats,
  fromKeyboard, isThinking, navHtml, reasoningLabel, reasoningOpen, refocus, stoppedText,
} from '../../shared/chat.js';
import { renderMarkdown } from '../../shared/markdown.js';

// The assistant's reply as sanitized markdown (shared/markdown.js), the cursor inside it while it streams.
function Markdown({ text, streaming, testId = 'message-text', ...attrs }) {
  const html = useMemo(() => renderMarkdown(text, { streaming }), [text, streaming]);
  return <div className="text markdown" data-testid={testId} dangerouslySetInnerHTML={{ __html: html }} {...attrs} />;
}

// The reply's thinking (shared/chat.js says when it is open and what it says). The state decides whether it is
// open: the summary's click toggles it there, and the browser's own toggle is prevented.
function Reasoning({ message, onToggle }) {
  return (
    <details className="reasoning" data-testid="reasoning" open={reasoningOpen(message)}>
      <summary data-testid="reasoning-summary" onClick={(e) => { e.preventDefault(); onToggle(message.id); }}>
        {reasoningLabel(message)}
      </summary>
      <Markdown text={message.reasoning} streaming={isThinking(message)} testId="reasoning-text" aria-live="off" />
    </details>
  );
}

const Message = memo(function Message({ message, onToggleReasoning }) {
  const { role, content, reasoning, status, reconnecting, stats, error } = message;
  return (
    <article className={`message ${role}`} data-testid="message" data-role={role} data-status={status}>
      <span className="who">{role === 'user' ? 'You' : 'Assistant'}</span>
      {reasoning ? <Reasoning message={message} onToggle={onToggleReasoning} /> : null}
      <div className="body">
        {role === 'assistant'
          ? <Markdown text={content} streaming={answerStreaming(message)} />
          : <span className="text" data-testid="message-text">{content}</span>}
      </div>
      {reconnecting && <p className="note reconnecting" data-testid="reconnecting" role="status">{RECONNECTING_TEXT}</p>}
      {status === 'stopped' && <p className="note" data-testid="stopped">{stoppedText(message)}</p>}
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
  const [chat] = useState(() => new ChatState()); // the state and how it changes: shared/chat.js
  const { messages, streaming, systemPrompt, ready } = useSyncExternalStore(chat.subscribe, chat.getState);
  const [input, setInput] = useState('');
  const keyboardRef = useRef(false); // the reply was asked for from the keyboard (Enter in the box, or Send)
  const wiringRef = useRef(null);
  const sendRef = useRef(null);
  const listRef = useRef(null);
  const inputRef = useRef(null);
  const stopRef = useRef(null);
  const composerRef = useRef(null);
  const wasStreamingRef = useRef(false);

  useEffect(() => {
    const wiring = connectChat(chat, { list: listRef.current, box: inputRef.current, send: () => sendRef.current() });
    wiringRef.current = wiring;
    chat.load();
    return () => {
      wiring.disconnect();
      chat.detach(); // unmounting closes the stream; the run waits its grace period for a remount to re-attach
    };
  }, [chat]);

  useLayoutEffect(() => autosize(inputRef.current), [input]);

  useEffect(() => { // keyboard users: Stop while streaming (the box and Send are disabled), the box afterwards
    if (streaming) {
      if (keyboardRef.current) stopRef.current?.focus();
    } else if (wasStreamingRef.current) {
      refocus(keyboardRef.current, { box: inputRef.current, stop: stopRef.current });
    }
    wasStreamingRef.current = streaming;
  }, [streaming]);

  function sendMessage() {
    if (!chat.canSend(input)) return;
    keyboardRef.current = fromKeyboard(composerRef.current);
    wiringRef.current.resume();
    setInput('');
    chat.send(input);
  }
  useEffect(() => { sendRef.current = sendMessage; }); // Enter (connectChat) sends what the box holds now

  function newChat() {
    chat.clear();
    inputRef.current?.focus();
  }

  return (
    <div className="app">
      <header className="top">
        <h1>Typewriter chat <span className="flavour">React</span></h1>
        <nav aria-label="Front ends and playgrounds" dangerouslySetInnerHTML={{ __html: navHtml('react') }} />
      </header>

      <div className="settings">
        <label htmlFor="system-prompt">System prompt</label>
        <input id="system-prompt" data-testid="system-prompt" type="text" autoComplete="off" value={systemPrompt}
               onChange={(e) => chat.setSystemPrompt(e.target.value)} disabled={streaming || !ready} />
        <button type="button" data-testid="clear" className="secondary" onClick={newChat} disabled={streaming}>
          New chat
        </button>
      </div>

      <main className="messages" data-testid="messages" role="log" aria-live="polite" aria-label="Conversation"
            aria-busy={streaming} tabIndex={0} ref={listRef}>
        {messages.length === 0 && <p className="empty">{EMPTY_TEXT}</p>}
        {messages.map((m) => <Message key={m.id} message={m} onToggleReasoning={chat.toggleReasoning} />)}
      </main>

      <form className="composer" ref={composerRef} onSubmit={(e) => { e.preventDefault(); sendMessage(); }}>
        <label htmlFor="input" className="visually-hidden">Message</label>
        <textarea id="input" data-testid="input" rows={1} placeholder="输入消息…" autoComplete="off"
                  enterKeyHint="send" required ref={inputRef} value={input} disabled={streaming}
                  onChange={(e) => setInput(e.target.value)} />
        <button type="submit" data-testid="send" disabled={streaming}>Send</button>
        <button type="button" data-testid="stop" className="stop" ref={stopRef} disabled={!streaming}
                onClick={chat.stop}>Stop</button>
      </form>
    </div>
  );
}
