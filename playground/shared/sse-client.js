/**
 * The one streaming client shared by the plain, React and Vue playgrounds.
 *
 * Why fetch + ReadableStream and not EventSource:
 * - History: the conversation chain needs every earlier turn with each request. EventSource can only GET, so the
 *   whole conversation would have to ride in the query string (URL length limits, logged everywhere). fetch POSTs
 *   a JSON body: `{messages, system_prompt}`.
 * - Errors: EventSource reports a server `event: error` and a dropped connection through the same `error` event
 *   name (the latter has no `data`, so the tutorial's `JSON.parse(event.data)` throws). With fetch, an HTTP
 *   status, a network failure, a server error event and a stream cut short are distinct outcomes.
 * The price is our own SSE parser; it follows the HTML spec's rules (below) and is small.
 *
 * Every reply is a run on the server (`run_id` in `X-Run-Id` and the start event; event ids `<run>:<seq>`):
 * - Resume: the run is started with a grace period (`on_disconnect=<seconds>`), so it goes on when the connection
 *   drops. The client then rejoins it (`GET /chat/runs/{id}/stream` with the `Last-Event-ID` of the last event it
 *   handled) and goes on from there, for as long as the server would wait: nothing is generated twice.
 * - Stop: `POST /chat/runs/{id}/cancel`; the run ends with `event: done` (status "cancelled", the partial reply
 *   and the tokens used), which is read before the connection is closed; it is closed anyway after STOP_WAIT_MS.
 * - Detach (a reload, a component unmounting): the connection is closed and the run left going for its grace
 *   period, so that the page that comes next can re-attach (`runId`: the whole run is replayed from its start).
 *
 * `streamChat` never throws: it resolves with one outcome object, so every UI handles the same cases.
 */

/** How long a run goes on with nobody listening (the `on_disconnect` the client asks for), and so how long the
 * client keeps trying to rejoin a dropped one. */
export const RUN_GRACE_SECONDS = 30;
/** After Stop, how long the client waits for the run's cancelled `done` before it closes the connection anyway. */
export const STOP_WAIT_MS = 2000;
/** The pause before each attempt to rejoin a dropped run; the last one repeats. */
export const REJOIN_DELAYS_MS = [250, 500, 1000, 2000, 4000];
/** `controller.abort(DETACH)`: close the connection but leave the run going (any other abort is Stop). */
export const DETACH = 'detach';

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

/** A run that ended cancelled (Stop here, in another tab, or by the server's grace period) is a stopped reply. */
function runOutcome(outcome) {
  if (outcome.status === 'done' && outcome.done.status === 'cancelled') return { status: 'stopped', done: outcome.done };
  return outcome;
}

/**
 * Stream the reply to `body` (POSTed to `url`), or re-attach to the run `runId` (replayed from its start), and
 * follow the run across dropped connections.
 *   onRun(runId)               — the run's id is known: keep it to re-attach after a reload
 *   onStart(start), onToken(token, tokenCount) — as events arrive (a replay begins again with `start`)
 *   onReasoning(token, tokenCount) — a piece of the model's thinking (`event: reasoning`), which comes before the
 *                                answer's tokens; its count is its own, from 1
 *   onConnection(state)        — 'reconnecting': the connection dropped and the client is rejoining the run (or is
 *                                re-attaching to `runId`); 'connected': it is following the run again
 *   signal                     — abort() is Stop; abort(DETACH) closes the connection and leaves the run going
 * Resolves with exactly one of:
 *   {status: 'done', done}                           — `event: done` arrived (its payload)
 *   {status: 'stopped', done?}                       — Stop, or the run was cancelled; `done`: the run's cancelled
 *                                                      summary (partial `full_response`, `token_count`, `usage`)
 *   {status: 'detached'}                             — abort(DETACH): the run goes on without this client
 *   {status: 'error', kind: 'server', message, type} — the server's `event: error`
 *   {status: 'error', kind: 'http', message, httpStatus} — the server refused the request (4xx/5xx)
 *   {status: 'error', kind: 'network', message}      — no response; a stream cut short with no run to rejoin; a run
 *                                                      the server no longer has, or could not be rejoined in time
 * After the terminal event the body is read to its end (the server closes it) for at most a second, then
 * cancelled: the connection is closed whatever happened, and nothing reconnects.
 */
export async function streamChat({
  url = '/chat', body, runId = null, signal, onRun, onStart, onToken, onReasoning, onConnection,
  graceSeconds = RUN_GRACE_SECONDS, rejoinDelays = REJOIN_DELAYS_MS,
}) {
  const run = { id: runId, lastEventId: null }; // lastEventId: of the last event handled, where a rejoin goes on
  let connection = null; // the AbortController of the request in flight
  let responded = false; // the request in flight has its response
  let progressed = false; // an event arrived on it
  let stopping = false;
  let cancelSent = false;
  let stopTimer;
  let wake = null; // ends the pause before a rejoin attempt early

  const closeConnection = () => connection?.abort();
  // Stop: the run's `done` follows on the open connection. If the cancel cannot be sent, close the connection:
  // the run's grace period then ends it.
  const cancelRun = () => {
    if (cancelSent || !run.id) return;
    cancelSent = true;
    fetch(`${url}/runs/${encodeURIComponent(run.id)}/cancel`, { method: 'POST', keepalive: true, cache: 'no-store' })
      .then((response) => { if (!response.ok) closeConnection(); }, closeConnection);
  };
  const runKnown = (id) => {
    if (!id || run.id) return;
    run.id = id;
    onRun?.(id);
    if (stopping) cancelRun();
  };
  const onAbort = () => {
    wake?.();
    if (signal.reason === DETACH) {
      closeConnection();
      return;
    }
    stopping = true;
    if (run.id) cancelRun();
    else if (responded) closeConnection(); // a stream that names no run: closing it is all Stop can do
    // (otherwise the response, and the run id with it, is on its way: runKnown cancels)
    stopTimer = setTimeout(closeConnection, STOP_WAIT_MS);
  };
  const endedHere = () => (signal?.reason === DETACH ? { status: 'detached' } : { status: 'stopped' });

  // One request: the run started, or rejoined. {outcome}; {lost: why} (the connection dropped or could not be
  // made); {closed: true} (closed here: Stop or detach).
  async function connect() {
    connection = new AbortController();
    responded = progressed = false;
    const rejoining = run.id !== null;
    const headers = { Accept: 'text/event-stream' };
    if (rejoining && run.lastEventId) headers['Last-Event-ID'] = run.lastEventId;
    if (!rejoining) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(rejoining ? `${url}/runs/${encodeURIComponent(run.id)}/stream`
                                       : `${url}?on_disconnect=${graceSeconds}`, {
        method: rejoining ? 'GET' : 'POST', headers, body: rejoining ? undefined : JSON.stringify(body),
        signal: connection.signal, cache: 'no-store',
      });
    } catch (err) {
      if (connection.signal.aborted) return { closed: true };
      return { lost: `Cannot reach the server (${err.message || err})` };
    }
    responded = true;
    if (!response.ok || (rejoining && response.status !== 200)) {
      const text = await response.text().catch(() => '');
      const message = httpErrorMessage(response, text);
      if (!rejoining) return { outcome: { status: 'error', kind: 'http', httpStatus: response.status, message } };
      // A server or proxy that cannot answer now may later (503 with Retry-After, 502, 504); a 404 is final: the
      // run is unknown, expired, or not ours.
      if (response.status >= 500 || response.status === 408 || response.status === 429) return { lost: message };
      return { outcome: { status: 'error', kind: 'network',
                          message: `The connection dropped and the reply cannot be resumed: ${message}` } };
    }
    const type = response.headers.get('Content-Type') || '';
    if (!type.startsWith('text/event-stream')) {
      response.body?.cancel().catch(() => {});
      return { outcome: { status: 'error', kind: 'http', httpStatus: response.status,
                          message: `HTTP ${response.status}: expected an event stream, got ${type || 'no content type'}` } };
    }
    if (!response.body) return { lost: 'The response has no body to stream' };
    runKnown(response.headers.get('X-Run-Id'));
    if (rejoining) onConnection?.('connected');
    if (stopping && !run.id) closeConnection();

    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // UTF-8; `stream: true` keeps a character split across chunks whole
    let outcome = null;
    const parser = new SSEParser(({ event, data, id }) => {
      if (outcome) return;
      let payload;
      try {
        payload = JSON.parse(data);
      } catch {
        outcome = { status: 'error', kind: 'network', message: `Unreadable event from the server: ${data.slice(0, 100)}` };
        return;
      }
      progressed = true;
      if (event === 'message') onToken?.(payload.token, payload.token_count);
      else if (event === 'reasoning') onReasoning?.(payload.token, payload.token_count);
      else if (event === 'start') {
        runKnown(payload.run_id);
        onStart?.(payload);
      } else if (event === 'done') outcome = { status: 'done', done: payload };
      else if (event === 'error') {
        outcome = { status: 'error', kind: 'server', type: payload.type, message: payload.error };
      }
      if (id) run.lastEventId = id;
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
      if (connection.signal.aborted) return { closed: true };
      return { lost: `The connection dropped (${err.message || err})` };
    } finally {
      // The server ends the stream right after `done` or `error`: read on to that end, so the request completes
      // normally, but never wait on it long. Then close the stream whatever happened.
      if (outcome) await drain(reader, 1000);
      reader.cancel().catch(() => {});
    }
    if (outcome) return { outcome };
    if (connection.signal.aborted) return { closed: true };
    return { lost: 'The connection closed before the reply was complete' };
  }

  if (signal?.aborted) return endedHere();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let attempt = 0;
    let giveUpAt = null; // the run's grace period, counted from the drop: after it the server has cancelled it
    for (;;) {
      const step = await connect();
      if (step.outcome) return runOutcome(step.outcome);
      if (step.closed || signal?.aborted) return endedHere();
      if (!run.id) return { status: 'error', kind: 'network', message: step.lost }; // no run to rejoin
      if (progressed) {
        attempt = 0;
        giveUpAt = null;
      }
      giveUpAt ??= Date.now() + graceSeconds * 1000;
      if (Date.now() >= giveUpAt) {
        return { status: 'error', kind: 'network',
                 message: `${step.lost}; the reply could not be resumed within ${graceSeconds} s` };
      }
      onConnection?.('reconnecting');
      const delay = rejoinDelays[Math.min(attempt, rejoinDelays.length - 1)];
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, Math.min(delay, Math.max(giveUpAt - Date.now(), 0)));
      });
      wake = null;
      attempt += 1;
      if (signal?.aborted) return endedHere();
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    clearTimeout(stopTimer);
  }
}
