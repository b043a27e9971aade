import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { EnvironmentsPage } from './EnvironmentsPage';
import { SandboxesPage } from './SandboxesPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => vi.unstubAllGlobals());

const env = {
  name: 'python:3.12-slim', digest: 'sha256:0123456789abcdef' + '0'.repeat(48), size_bytes: 52428800,
  created_at: '2026-01-01T00:00:00Z', source: 'docker-archive', env: ['PATH=/usr/local/bin:/usr/bin'], workdir: '', user: '',
  programs: { python3: '/usr/local/bin/python3', bash: '/bin/bash' }, languages: ['bash', 'python'],
};

describe('EnvironmentsPage', () => {
  it('lists each environment with its short digest, size, languages and source', async () => {
    mockFetch({ 'GET /api/v1/environments': () => json([env]) });
    renderAt('/environments', [{ path: '/environments', element: <EnvironmentsPage /> }]);
    const table = await screen.findByRole('table', { name: 'Environments' });
    const row = within(table).getByRole('row', { name: /python:3\.12-slim/ });
    expect(row).toHaveTextContent('0123456789ab');
    expect(row).not.toHaveTextContent('sha256:');
    expect(row).toHaveTextContent('50 MB');
    expect(row).toHaveTextContent('bash, python');
    expect(row).toHaveTextContent('docker-archive');
  });

  it('says how to add one when there are none', async () => {
    mockFetch({ 'GET /api/v1/environments': () => json([]) });
    renderAt('/environments', [{ path: '/environments', element: <EnvironmentsPage /> }]);
    expect(await screen.findByText('No environments yet')).toBeInTheDocument();
    expect(screen.getByText(/crucible env import - --name python:3\.12-slim/)).toBeInTheDocument();
  });
});

describe('SandboxesPage', () => {
  it('creates a sandbox in the environment chosen and lists it with its environment', async () => {
    const created = {
      id: 'sbx_0123456789abcdef0123', status: 'running', stop_reason: null, runtime: 'runc', environment: env.name,
      environment_digest: env.digest, limits: { memory_mb: 512, cpus: 1, pids: 256, disk_mb: 1024 }, ttl_s: 3600,
      idle_timeout_s: 600, labels: {}, owner_key_id: null, created_at: '2026-01-01T00:00:00Z',
      last_activity_at: '2026-01-01T00:00:00Z', stopped_at: null, expires_at: '2026-01-01T01:00:00Z',
      resources: { cpu_ms: 0, peak_memory_bytes: 0, exec_count: 0 },
    };
    const fetch = mockFetch({
      'GET /api/v1/environments': () => json([env]),
      'GET /api/v1/sandboxes': () => json({ items: [created], next_cursor: null }),
      'POST /api/v1/sandboxes': () => json(created, 201),
    });
    renderAt('/sandboxes', [
      { path: '/sandboxes', element: <SandboxesPage /> },
      { path: '/sandboxes/:id', element: <p>sandbox page</p> },
    ]);
    const row = await screen.findByRole('row', { name: /sbx_/ });
    expect(row).toHaveTextContent('python:3.12-slim');
    await screen.findByRole('option', { name: /python:3\.12-slim/ });
    await userEvent.selectOptions(screen.getByLabelText('Environment'), 'python:3.12-slim');
    await userEvent.click(screen.getByRole('button', { name: 'New sandbox' }));
    expect(await screen.findByText('sandbox page')).toBeInTheDocument();
    const post = fetch.mock.calls.find(([, init]) => init?.method === 'POST')!;
    expect(JSON.parse(post[1]!.body as string)).toEqual({ environment: 'python:3.12-slim' });
  });
});
