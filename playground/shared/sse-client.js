/**
 * The one streaming client shared by the plain, React and Vue playgrounds.
 *
 * Why fetch + ReadableStream and not EventSource:
 * - History: the conversation chain needs every earlier turn with each request. EventSource can only GET, so the
 *   whole conversation would have to ride in the query string (URL length limits, logged everywhere). fetch POSTs
 *   a JSON body: `{messages, system_prompt}`.
 * - Stop: an AbortController ends the request at once; the server sees the disconnect and cancels the generation.
 * - Errors: EventSource reports a server `event: error` and a dropped connection through the same `error` event
 *   name (the latter has no `data`, so the tutorial's `JSON.parse(event.data)` throws), and it silently reconnects
 *   after the stream ends, which here would start a second generation. With fetch, an HTTP status, a network
 *   failure, a server error event and a stream cut short are four distinct outcomes, and nothing reconnects.
 * The price is our own SSE parser; it follows the HTML spec's rules (below) and is small.
 *
 * `streamChat` never throws: it resolves with one outcome object, so every UI handles the same five cases.
 */

/**
 * Incremental SSE parser (HTML Living Standard, "event stream interpretation"): lines end with CRLF, LF or CR
 * (a CR at the end of a chunk may be the first half of a CRLF); `:` starts a comment; `field: value` drops one
 * space after the colon; several `data:` lines join with "\n"; a blank line dispatches the event, unless it has
 * no data; `id` is remembered across events (and ignored if it contains NUL); unknown fields are ignored.
 */
export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.pendingCR = false; // the previous chunk ended with CR: a leading LF in the next one is its pair
    this.data = [];
    this.event = '';
    this.lastEventId = '';
  }

  feed(text) {
    if (this.pendingCR && text.startsWith('\n')) text = text.slice(1);
    this.pendingCR = false;
    let buffer = this.buffer + text;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(buffer.slice(start, i));
      if (c === 13) {
        if (i + 1 === buffer.length) this.pendingCR = true;
        else if (buffer.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.buffer = buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.lastEventId });
      }
      this.data = [];
      this.event = '';
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ':' comment, e.g. `: heartbeat`
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
    // `retry` only matters to a reconnecting client; other fields are ignored by the spec.
  }
}

/** "HTTP 422 Unprocessable Entity: <why>" from a refusal: FastAPI's `{detail}` or the server's `{error, type}`. */
function httpErrorMessage(response, body) {
  let detail = body.trim();
  try {
    const parsed = JSON.parse(body);
    const d = parsed.detail ?? parsed.error ?? parsed;
    detail = Array.isArray(d) ? d.map((x) => x.msg ?? JSON.stringify(x)).join('; ')
      : typeof d === 'string' ? d : JSON.stringify(d);
  } catch { /* not JSON: keep the text */ }
  const retry = response.headers.get('Retry-After');
  return `HTTP ${response.status}${response.statusText ? ' ' + response.statusText : ''}`
    + (detail ? `: ${detail.slice(0, 300)}` : '') + (retry ? ` (try again in ${retry} s)` : '');
}

async function drain(reader, ms) {
  let timer;
  const rest = (async () => { while (!(await reader.read()).done); })().catch(() => {});
  await Promise.race([rest, new Promise((resolve) => { timer = setTimeout(resolve, ms); })]);
  clearTimeout(timer);
}

/**
 * POST `body` to `url` and stream the reply.
 *   onStart(start), onToken(token, tokenCount) — called as events arrive.
 * Resolves with exactly one of:
 *   {status: 'done', done}                          — `event: done` arrived (its payload)
 *   {status: 'error', kind: 'server', message, type} — the server's `event: error`
 *   {status: 'error', kind: 'http', message, httpStatus} — the server refused the request (4xx/5xx)
 *   {status: 'error', kind: 'network', message}     — no response, or the connection dropped mid-stream
 *   {status: 'stopped'}                             — `signal` aborted (Stop); the server cancels the generation
 * After done or a server error the body is read to its end (the server closes it) for at most a second, then
 * cancelled: the connection is closed either way, and nothing reconnects.
 */
export async function streamChat({ url = '/chat', body, signal, onStart, onToken }) {
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (signal?.aborted) return { status: 'stopped' };
    return { status: 'error', kind: 'network', message: `Cannot reach the server (${err.message || err})` };
  }
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    return { status: 'error', kind: 'http', httpStatus: response.status, message: httpErrorMessage(response, text) };
  }
  const type = response.headers.get('Content-Type') || '';
  if (!type.startsWith('text/event-stream')) {
    response.body?.cancel().catch(() => {});
    return { status: 'error', kind: 'http', httpStatus: response.status,
             message: `HTTP ${response.status}: expected an event stream, got ${type || 'no content type'}` };
  }
  if (!response.body) {
    return { status: 'error', kind: 'network', message: 'The response has no body to stream' };
  }

  const reader = response.body.getReader();
  const decoder = new TextDecoder(); // UTF-8; `stream: true` keeps a character split across chunks whole
  let outcome = null;
  const parser = new SSEParser(({ event, data }) => {
    if (outcome) return;
    let payload;
    try {
      payload = JSON.parse(data);
    } catch {
      const message = `Unreadable event from the server: ${data.slice(0, 100)}`;
      outcome = { status: 'error', kind: 'network', message };
      return;
    }
    if (event === 'message') onToken?.(payload.token, payload.token_count);
    else if (event === 'start') onStart?.(payload);
    else if (event === 'done') outcome = { status: 'done', done: payload };
    else if (event === 'error') {
      outcome = { status: 'error', kind: 'server', type: payload.type, message: payload.error };
    }
  });

  try {
    while (!outcome) {
      const { value, done } = await reader.read();
      if (done) {
        parser.feed(decoder.decode()); // an event cut off before its blank line is discarded, as the spec says
        break;
      }
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } catch (err) {
    if (signal?.aborted) return { status: 'stopped' };
    return { status: 'error', kind: 'network', message: `The connection dropped (${err.message || err})` };
  } finally {
    // The server ends the stream right after `done` or `error`: read on to that end, so the request completes
    // normally, but never wait on it long. Then close the stream whatever happened (done, error or Stop): an open
    // stream would keep the connection, and the generation, alive.
    if (outcome) await drain(reader, 1000);
    reader.cancel().catch(() => {});
  }
  if (outcome) return outcome;
  if (signal?.aborted) return { status: 'stopped' };
  return { status: 'error', kind: 'network', message: 'The connection closed before the reply was complete' };
}
