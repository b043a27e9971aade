import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, within } from '@testing-library/react';
import { EvaluationPage } from './EvaluationPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => vi.unstubAllGlobals());

const limits = { timeout_s: 10, cpu_s: 10, memory_mb: 256, pids: 64, cpus: 1, output_bytes: 1048576, disk_mb: 64 };
const record = {
  id: 'e1f2a3b4c5d6',
  status: 'completed',
  batch_id: null,
  created_at: '2026-01-01T00:00:00Z',
  started_at: '2026-01-01T00:00:01Z',
  finished_at: '2026-01-01T00:00:03Z',
  queue_wait_ms: 1000,
  attempts: 1,
  error: null,
  request: {
    language: 'python', code: 'x = []\n', files: null, entrypoint: null, stdin: '', args: [], limits: { ...limits, memory_mb: 128 },
    runtime: 'runc', priority: 'normal', labels: { team: 'red' }, expected_output: null, test_code: null,
  },
  result: {
    termination: 'memory_limit', exit_code: null, signal: 'SIGKILL', stdout: 'holding 112 MB\n', stderr: '',
    stdout_truncated: false, stderr_truncated: false, stdout_inline_truncated: false, stderr_inline_truncated: false,
    wall_ms: 2000, cpu_ms: 900, peak_memory_bytes: 134217728, files: [{ path: 'out/result.txt', size: 24 }],
    runtime: { name: 'runc', version: '1.1.5' }, limits: { ...limits, memory_mb: 128 }, events: { oom_kill: 1, pids_limit: 0, memory_limit_hits: 0 }, verdict: null,
  },
};

describe('EvaluationPage', () => {
  it('shows the verdict, resources, kernel events and files of a finished run', async () => {
    mockFetch({ 'GET /api/v1/evaluations/e1f2a3b4c5d6': () => json(record) });
    renderAt('/evaluations/e1f2a3b4c5d6', [{ path: '/evaluations/:id', element: <EvaluationPage /> }]);
    const verdict = await screen.findByTestId('verdict');
    expect(within(verdict).getByText('Stopped: used more than the 128 MB memory limit')).toBeInTheDocument();
    expect(screen.getByRole('meter', { name: 'Peak memory' })).toHaveAttribute('aria-valuetext', '128 MB of 128 MB');
    expect(screen.getByText(/out-of-memory killer stopped a process/)).toBeInTheDocument();
    expect(screen.getByRole('link', { name: 'out/result.txt' })).toHaveAttribute('href', '/api/v1/evaluations/e1f2a3b4c5d6/files/out/result.txt');
    expect(screen.getByRole('log', { name: 'stdout output' })).toHaveTextContent('holding 112 MB');
    expect(screen.queryByRole('button', { name: 'Cancel' })).not.toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Copy as curl' })).toBeInTheDocument();
  });

  it('says not found for an unknown id', async () => {
    mockFetch({ 'GET /api/v1/evaluations/nope': () => json({ detail: 'no evaluation nope' }, 404) });
    renderAt('/evaluations/nope', [{ path: '/evaluations/:id', element: <EvaluationPage /> }]);
    expect(await screen.findByText('Not found')).toBeInTheDocument();
  });
});
