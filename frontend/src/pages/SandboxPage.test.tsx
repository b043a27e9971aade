import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { SandboxPage } from './SandboxPage';
import { SandboxesPage } from './SandboxesPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => vi.unstubAllGlobals());

const box = {
  id: 'sbx_0123456789abcdef0123', status: 'running', stop_reason: null, runtime: 'runc',
  limits: { memory_mb: 512, cpus: 1, pids: 256, disk_mb: 1024 }, ttl_s: 3600, idle_timeout_s: 600, labels: {},
  owner_key_id: 'key_alice', created_at: '2026-01-01T00:00:00Z', last_activity_at: '2026-01-01T00:00:05Z',
  stopped_at: null, expires_at: '2026-01-01T01:00:00Z', resources: { cpu_ms: 12, peak_memory_bytes: 8388608, exec_count: 1 },
  worker_id: 'worker@host-a:4242:a1b2c3',
};
const exec1 = {
  sandbox_id: box.id, seq: 1, cmd: ['bash', '-lc', 'ls /tmp'], cwd: null, user: null, started_at: '2026-01-01T00:00:01Z',
  finished_at: '2026-01-01T00:00:02Z', returncode: 2, timed_out: false, duration_ms: 40, stdout: '', stderr: 'ls: no such dir\n',
  stdout_truncated: false, stderr_truncated: false,
};

/** An SSE response that carries `events` and then stays open (the stream is live). */
function sse(events: [string, unknown][]): Response {
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      events.forEach(([event, data], i) => c.enqueue(new TextEncoder().encode(`id: ${i + 1}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`)));
    },
  });
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

describe('SandboxPage', () => {
  it('shows the stored transcript, live output, and runs a command from the box', async () => {
    const started = { ...exec1, seq: 2, cmd: ['bash', '-lc', 'echo hello'], finished_at: null, returncode: null, duration_ms: null, stderr: '' };
    const fetch = mockFetch({
      [`GET /api/v1/sandboxes/${box.id}/execs`]: () => json({ items: [exec1], next_cursor: null }),
      [`GET /api/v1/sandboxes/${box.id}/events`]: () => sse([['exec_started', started], ['output', { seq: 2, stream: 'stdout', data: 'hello\n' }]]),
      [`GET /api/v1/sandboxes/${box.id}`]: () => json(box),
      [`POST /api/v1/sandboxes/${box.id}/exec`]: () => json({ ...started, finished_at: 't', returncode: 0, stdout: 'hello\n' }),
      [`DELETE /api/v1/sandboxes/${box.id}`]: () => new Response(null, { status: 204 }),
    });
    renderAt(`/sandboxes/${box.id}`, [{ path: '/sandboxes/:id', element: <SandboxPage /> }]);
    // Its host: the worker id of /api/v1/workers, whole.
    expect(await screen.findByText('worker@host-a:4242:a1b2c3')).toBeInTheDocument();
    const first = await screen.findByRole('listitem', { name: 'Command 1' });
    expect(within(first).getByText("bash -lc 'ls /tmp'")).toBeInTheDocument();
    expect(within(first).getByText('exit 2')).toBeInTheDocument();
    expect(within(first).getByRole('log', { name: 'stderr of command 1' })).toHaveTextContent('ls: no such dir');
    const live = await screen.findByRole('listitem', { name: 'Command 2' });
    expect(within(live).getByText('running…')).toBeInTheDocument();
    expect(within(live).getByRole('log', { name: 'stdout of command 2' })).toHaveTextContent('hello');

    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Run a command (bash -lc)'), 'echo hello');
    await user.click(screen.getByRole('button', { name: 'Run' }));
    await waitFor(() => expect(fetch.mock.calls.some(([, init]) => init?.method === 'POST')).toBe(true));
    const post = fetch.mock.calls.find(([, init]) => init?.method === 'POST')!;
    expect(JSON.parse(String(post[1]!.body))).toEqual({ cmd: ['bash', '-lc', 'echo hello'] });

    await user.click(screen.getByRole('button', { name: 'Stop' }));
    await waitFor(() => expect(fetch.mock.calls.some(([, init]) => init?.method === 'DELETE')).toBe(true));
  });

  it('says why a stopped sandbox stopped and offers no box', async () => {
    const stopped = { ...box, status: 'stopped', stop_reason: 'idle_timeout', stopped_at: '2026-01-01T00:10:00Z' };
    mockFetch({
      [`GET /api/v1/sandboxes/${box.id}/execs`]: () => json({ items: [], next_cursor: null }),
      [`GET /api/v1/sandboxes/${box.id}/events`]: () => sse([['stopped', stopped]]),
      [`GET /api/v1/sandboxes/${box.id}`]: () => json(stopped),
    });
    renderAt(`/sandboxes/${box.id}`, [{ path: '/sandboxes/:id', element: <SandboxPage /> }]);
    expect(await screen.findByText(/idle for too long/)).toBeInTheDocument();
    expect(screen.queryByRole('button', { name: 'Stop' })).not.toBeInTheDocument();
    expect(screen.queryByLabelText('Run a command (bash -lc)')).not.toBeInTheDocument();
  });
});

describe('SandboxesPage', () => {
  it('lists sandboxes with status, owner, host and resources', async () => {
    const other = { ...box, id: 'sbx_ffff', status: 'lost', stop_reason: 'lost', worker_id: 'worker@host-b:77:00ff00' };
    mockFetch({ 'GET /api/v1/sandboxes': () => json({ items: [box, other], next_cursor: null }) });
    renderAt('/sandboxes', [{ path: '/sandboxes', element: <SandboxesPage /> }]);
    const table = await screen.findByRole('table', { name: 'Sandboxes' });
    const rows = within(table).getAllByRole('row');
    expect(rows).toHaveLength(3);
    expect(within(rows[1]).getByText('key_alice')).toBeInTheDocument();
    expect(within(rows[1]).getByText('running')).toBeInTheDocument();
    expect(within(rows[1]).getByText('12 ms')).toBeInTheDocument();
    expect(within(rows[2]).getByText('lost')).toBeInTheDocument();
    // Each on its host (host:pid of the worker id; the whole id as the title).
    expect(within(rows[1]).getByText('host-a:4242')).toHaveAttribute('title', box.worker_id);
    expect(within(rows[2]).getByText('host-b:77')).toHaveAttribute('title', other.worker_id);
    expect(within(rows[1]).getByRole('link')).toHaveAttribute('href', `/sandboxes/${box.id}`);
  });
});
