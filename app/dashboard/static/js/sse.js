// Server-sent events over fetch(): EventSource cannot send an Authorization header, so
// the stream is read and parsed here, with Last-Event-ID resume after a dropped connection.

import { authHeaders } from './api.js';

/** Parse one block of `field: value` lines (one event) into {id, event, data}. */
export function parseEvent(lines) {
  const ev = { id: null, event: 'message', data: [], retry: null };
  for (const line of lines) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') ev.data.push(value);
    else if (field === 'event') ev.event = value;
    else if (field === 'id' && !value.includes('\0')) ev.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) ev.retry = Number(value);
  }
  return { ...ev, data: ev.data.join('\n') };
}

async function readEvents(body, onBlock) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let lines = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const parts = buffer.split(/\r\n|\r|\n/);
    buffer = parts.pop();
    for (const line of parts) {
      if (line === '') {
        // onBlock answers true once nothing more is wanted: stop reading this stream.
        if (lines.length && onBlock(parseEvent(lines))) {
          await reader.cancel().catch(() => {});
          return;
        }
        lines = [];
      } else {
        lines.push(line);
      }
    }
  }
}

/**
 * Follow `GET /v1/jobs/{id}/events` until the job reaches a terminal status or `signal`
 * aborts. `onEvent({event, id, data})` gets each event with `data` parsed as JSON.
 * Reconnects with Last-Event-ID when the connection drops; gives up on 4xx answers.
 */
export async function followJob(jobId, onEvent, { signal, terminal = isTerminal } = {}) {
  let lastId = null;
  let retryMs = 1000;
  let finished = false;
  while (!finished && !signal?.aborted) {
    const headers = { Accept: 'text/event-stream', ...authHeaders() };
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    try {
      const res = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal, cache: 'no-store' });
      if (res.status >= 400 && res.status < 500) return false;
      if (res.ok && res.body) {
        await readEvents(res.body, (ev) => {
          if (ev.id !== null) lastId = ev.id;
          if (ev.retry !== null) retryMs = ev.retry;
          let data = null;
          try { data = ev.data ? JSON.parse(ev.data) : null; } catch { data = ev.data; }
          onEvent({ event: ev.event, id: ev.id, data });
          if (terminal(ev.event, data)) finished = true;
          return finished;
        });
      }
    } catch (err) {
      if (signal?.aborted) return false;
    }
    if (!finished) await sleep(retryMs, signal);
  }
  return finished;
}

export function isTerminal(event, data) {
  return event === 'status' && ['succeeded', 'failed', 'cancelled'].includes(data?.status);
}

function sleep(msec, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, msec);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
