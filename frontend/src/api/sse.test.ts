// @vitest-environment node
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createSSEParser, parseData, subscribe, type SSEMessage } from './sse';

function collect(chunks: string[]) {
  const out: SSEMessage[] = [];
  const p = createSSEParser((m) => out.push(m));
  for (const c of chunks) p.push(c);
  return { out, p };
}

describe('createSSEParser', () => {
  it('parses named events with ids and multi-line data', () => {
    const { out, p } = collect(['id: 1\nevent: status\ndata: {"status":"running"}\n\n', 'id: 2\nevent: stdout\ndata: a\ndata: b\n\n']);
    expect(out).toEqual([
      { event: 'status', data: '{"status":"running"}', id: '1' },
      { event: 'stdout', data: 'a\nb', id: '2' },
    ]);
    expect(p.lastEventId).toBe('2');
  });

  it('handles chunks split anywhere, CRLF, comments and defaults', () => {
    const { out } = collect([': keep-alive\r\n\r\nda', 'ta: hel', 'lo\r', '\n\r\n', 'retry: 500\nevent: x\n\n']);
    expect(out).toEqual([{ event: 'message', data: 'hello', id: null }]);
  });

  it('parses JSON data when it is JSON', () => {
    expect(parseData('{"data":"x"}')).toEqual({ data: 'x' });
    expect(parseData('plain')).toBe('plain');
  });
});

function streamResponse(text: string, status = 200): Response {
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new TextEncoder().encode(text));
      c.close();
    },
  });
  return new Response(body, { status, headers: { 'Content-Type': 'text/event-stream' } });
}

describe('subscribe', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('delivers events, then reconnects with Last-Event-ID until a final event', async () => {
    const calls: (string | null)[] = [];
    const fetchMock = vi.fn(async (_url: string, init: RequestInit) => {
      const headers = init.headers as Record<string, string>;
      calls.push(headers['Last-Event-ID'] ?? null);
      return calls.length === 1
        ? streamResponse('id: 1\nevent: stdout\ndata: {"data":"a"}\n\nretry: 1\n\n')
        : streamResponse('id: 2\nevent: result\ndata: {"id":"e","status":"completed"}\n\n');
    });
    vi.stubGlobal('fetch', fetchMock);
    const events: string[] = [];
    await new Promise<void>((resolve) => {
      subscribe('/x', { onEvent: (name) => events.push(name), onFinal: resolve });
    });
    expect(events).toEqual(['stdout', 'result']);
    expect(calls).toEqual([null, '1']);
  });

  it('finishes at once when the stream is gone (404)', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response('{}', { status: 404 })));
    await new Promise<void>((resolve) => subscribe('/x', { onEvent: () => undefined, onFinal: resolve }));
  });
});
