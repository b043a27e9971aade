/**
 * A small Server-Sent Events client built on fetch(), because EventSource only
 * delivers events whose names were registered in advance and we want to handle any
 * event name the server sends. Reconnects with Last-Event-ID after a dropped
 * connection and stops after a final event (`result`, `stopped`, `end`, `done`, …).
 * Being fetch()-based, it also sends the API key as a header (EventSource cannot).
 */
import { authHeaders, notifyUnauthorized } from './auth';

export interface SSEMessage {
  event: string;
  data: string;
  id: string | null;
}

/** Incremental parser for the text/event-stream format (WHATWG HTML §9.2.6). */
export function createSSEParser(onMessage: (m: SSEMessage) => void) {
  let buffer = '';
  let event = '';
  let data: string[] = [];
  let lastId: string | null = null;
  let retry: number | null = null;

  function dispatch() {
    if (data.length > 0) {
      onMessage({ event: event || 'message', data: data.join('\n'), id: lastId });
    }
    event = '';
    data = [];
  }

  function line(l: string) {
    if (l === '') return dispatch();
    if (l.startsWith(':')) return; // comment / keep-alive
    const colon = l.indexOf(':');
    const field = colon === -1 ? l : l.slice(0, colon);
    let value = colon === -1 ? '' : l.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') {
      if (!value.includes('\0')) lastId = value;
    } else if (field === 'retry' && /^\d+$/.test(value)) retry = Number(value);
  }

  return {
    push(chunk: string) {
      buffer += chunk;
      let idx: number;
      // Lines end in \r\n, \n or \r.
      while ((idx = buffer.search(/\r\n|\r|\n/)) !== -1) {
        // A lone \r at the very end may be half of a \r\n: wait for more.
        if (buffer[idx] === '\r' && idx === buffer.length - 1) break;
        const l = buffer.slice(0, idx);
        const sepLen = buffer.startsWith('\r\n', idx) ? 2 : 1;
        buffer = buffer.slice(idx + sepLen);
        line(l);
      }
    },
    get lastEventId() {
      return lastId;
    },
    get retry() {
      return retry;
    },
  };
}

/** Parses an event's data as JSON when it is JSON, else returns the raw string. */
export function parseData(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

// `stopped` ends a long-lived sandbox's stream.
export const FINAL_EVENTS = new Set(['result', 'end', 'done', 'complete', 'completed', 'finished', 'stopped']);

export interface SubscribeOptions {
  onEvent: (event: string, data: unknown, id: string | null) => void;
  onOpen?: () => void;
  onError?: (err: unknown, attempt: number) => void;
  /** Called once after the stream finished (final event or server closed it after one). */
  onFinal?: () => void;
  lastEventId?: string | null;
  maxRetries?: number;
}

/** Opens the stream; returns a function that closes it. */
export function subscribe(url: string, opts: SubscribeOptions): () => void {
  const controller = new AbortController();
  let lastId = opts.lastEventId ?? null;
  let finished = false;
  let attempt = 0;
  const maxRetries = opts.maxRetries ?? 20;

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      controller.signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      });
    });

  async function connect(): Promise<void> {
    while (!controller.signal.aborted && !finished) {
      let retryMs = 1000;
      try {
        const headers: Record<string, string> = { Accept: 'text/event-stream', ...authHeaders() };
        if (lastId !== null) headers['Last-Event-ID'] = lastId;
        const res = await fetch(url, { headers, signal: controller.signal, cache: 'no-store' });
        if (res.status === 401) {
          notifyUnauthorized(); // the sign-in page takes over; no retry loop
          finished = true;
          return;
        }
        if (res.status === 404 || res.status === 410) {
          // Nothing to stream (gone or never existed): let the caller refetch.
          finished = true;
          opts.onFinal?.();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`event stream: HTTP ${res.status}`);
        attempt = 0;
        opts.onOpen?.();
        const parser = createSSEParser((m) => {
          if (m.id !== null) lastId = m.id;
          opts.onEvent(m.event, parseData(m.data), m.id);
          if (FINAL_EVENTS.has(m.event)) finished = true;
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(value);
          if (finished) {
            await reader.cancel().catch(() => undefined);
            break;
          }
        }
        if (parser.retry !== null) retryMs = parser.retry;
        if (finished) {
          opts.onFinal?.();
          return;
        }
        // The server closed the stream without a final event: reconnect.
      } catch (err) {
        if (controller.signal.aborted) return;
        attempt += 1;
        opts.onError?.(err, attempt);
        if (attempt > maxRetries) return;
        retryMs = Math.min(1000 * 2 ** Math.min(attempt - 1, 4), 15000);
      }
      await sleep(retryMs);
    }
  }

  void connect();
  return () => controller.abort();
}
