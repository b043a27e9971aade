import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, within } from '@testing-library/react';
import { DashboardPage, sandboxCount } from './DashboardPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => vi.unstubAllGlobals());

const beat = new Date().toISOString();
const worker = {
  kind: 'celery', pid: 11, queues: ['crucible'], state: 'alive', last_heartbeat: beat, started_at: beat, load: 0.5,
};
const hostA = { ...worker, id: 'worker@host-a:11:a1a1a1', host: 'host-a', capacity: 4, running: 2, sandbox_capacity: 8, sandboxes_running: 3 };
const evalsOnly = { ...worker, id: 'worker@host-b:12:b2b2b2', host: 'host-b', pid: 12, capacity: 2, running: 0, sandbox_capacity: 0, sandboxes_running: 0 };

describe('DashboardPage', () => {
  it("shows each worker's sandboxes beside its evaluations", async () => {
    mockFetch({
      'GET /api/v1/workers': () => json({ items: [hostA, evalsOnly] }),
      'GET /api/v1/queue': () => json({ depth: { high: 0, normal: 1, low: 0 }, running: 2, capacity: 6 }),
      'GET /api/v1/evaluations': () => json({ items: [], next_cursor: null }),
      'GET /api/v1/dead-letters': () => json({ items: [] }),
      'GET /healthz': () => json({ ok: true }),
      'GET /readyz': () => json({ ok: true }),
    });
    renderAt('/', [{ path: '/', element: <DashboardPage /> }]);
    const table = await screen.findByRole('table', { name: 'Workers' });
    expect(within(table).getByRole('columnheader', { name: 'Evaluations' })).toBeInTheDocument();
    expect(within(table).getByRole('columnheader', { name: 'Sandboxes' })).toBeInTheDocument();
    const a = within(table).getByRole('row', { name: `Worker ${hostA.id}` });
    expect(within(a).getByText('2 / 4')).toBeInTheDocument(); // evaluations
    expect(within(a).getByTestId('worker-sandboxes')).toHaveTextContent('3 / 8');
    const b = within(table).getByRole('row', { name: `Worker ${evalsOnly.id}` });
    expect(within(b).getByTestId('worker-sandboxes')).toHaveTextContent('—');
  });

  it('counts an embedded server’s own sandboxes, which have no cap of their own', () => {
    expect(sandboxCount({ sandbox_capacity: 0, sandboxes_running: 2 })).toBe('2');
    expect(sandboxCount({ sandbox_capacity: 0, sandboxes_running: 0 })).toBe('—');
    expect(sandboxCount({ sandbox_capacity: 200, sandboxes_running: 0 })).toBe('0 / 200');
  });
});
