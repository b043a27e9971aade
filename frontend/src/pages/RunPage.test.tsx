import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { RunPage } from './RunPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => {
  vi.unstubAllGlobals();
  localStorage.clear();
});

const ENV = {
  name: 'python:3.12-slim', digest: 'sha256:0123456789abcdef' + '0'.repeat(48), size_bytes: 52428800,
  created_at: '2026-01-01T00:00:00Z', source: 'docker-archive', env: [], workdir: '', user: '',
  programs: { python3: '/usr/local/bin/python3', bash: '/bin/bash' }, languages: ['bash', 'python'],
};

const routes = [
  { path: '/', element: <RunPage /> },
  { path: '/evaluations/:id', element: <p>evaluation page</p> },
];

describe('RunPage', () => {
  it('shows 422 errors next to the offending field', async () => {
    mockFetch({
      'POST /api/v1/evaluations': () =>
        json(
          {
            detail: 'limits.memory_mb: Input should be less than or equal to 4096',
            field: 'limits.memory_mb',
            errors: [{ field: 'limits.memory_mb', reason: 'Input should be less than or equal to 4096', in: 'body' }],
          },
          422,
        ),
    });
    renderAt('/', routes);
    const memory = screen.getByLabelText('Memory (MB)');
    await userEvent.type(memory, '99999');
    await userEvent.click(screen.getByRole('button', { name: 'Run' }));
    const msg = await screen.findByText('Input should be less than or equal to 4096');
    expect(msg.id).toBe('limit-memory_mb-error');
    expect(memory).toHaveAttribute('aria-invalid', 'true');
    expect(memory.getAttribute('aria-describedby')).toContain('limit-memory_mb-error');
  });

  it('shows errors no field claims at the top of the form', async () => {
    mockFetch({ 'POST /api/v1/evaluations': () => json({ detail: [{ loc: ['body', 'weird'], msg: 'no such thing', type: 'x' }] }, 422) });
    renderAt('/', routes);
    await userEvent.click(screen.getByRole('button', { name: 'Run' }));
    expect(await screen.findByText('weird: no such thing')).toBeInTheDocument();
  });

  it('submits the template with its limits on Ctrl+Enter and opens the evaluation', async () => {
    const fetchMock = mockFetch({ 'POST /api/v1/evaluations': () => json({ id: 'abc', status: 'queued' }, 202) });
    renderAt('/', routes);
    await userEvent.selectOptions(screen.getByLabelText('Template'), 'memory-bomb');
    expect(screen.getByLabelText('Memory (MB)')).toHaveValue(128);
    fireEvent.keyDown(screen.getByLabelText('Memory (MB)'), { key: 'Enter', ctrlKey: true });
    expect(await screen.findByText('evaluation page')).toBeInTheDocument();
    const post = fetchMock.mock.calls.find(([, init]) => init?.method === 'POST')!;
    const body = JSON.parse(post[1]!.body as string);
    expect(body).toMatchObject({ language: 'python', limits: { memory_mb: 128 }, runtime: 'crun', priority: 'normal' });
    expect(body).not.toHaveProperty('environment'); // host: left to the server's default
    expect(body.code).toContain('bytearray');
  });

  it('runs in the environment chosen, and marks those lacking the language', async () => {
    const fetchMock = mockFetch({
      'GET /api/v1/environments': () => json([ENV, { ...ENV, name: 'shell-only', languages: ['bash'] }]),
      'POST /api/v1/evaluations': () => json({ id: 'abc', status: 'queued' }, 202),
    });
    renderAt('/', routes);
    const select = screen.getByLabelText('Environment');
    expect(await screen.findByRole('option', { name: 'shell-only (bash) · no python' })).toBeInTheDocument();
    await userEvent.selectOptions(select, 'python:3.12-slim');
    await userEvent.click(screen.getByRole('button', { name: 'Run' }));
    expect(await screen.findByText('evaluation page')).toBeInTheDocument();
    const post = fetchMock.mock.calls.find(([, init]) => init?.method === 'POST')!;
    expect(JSON.parse(post[1]!.body as string)).toMatchObject({ environment: 'python:3.12-slim', language: 'python' });
  });

  it("shows the server's refusal of a language the environment lacks", async () => {
    mockFetch({
      'GET /api/v1/environments': () => json([{ ...ENV, name: 'shell-only', languages: ['bash'] }]),
      'POST /api/v1/evaluations': () =>
        json({ detail: "environment 'shell-only' has no python (its languages: bash)", field: 'language' }, 422),
    });
    renderAt('/', routes);
    await screen.findByRole('option', { name: /shell-only/ });
    await userEvent.selectOptions(screen.getByLabelText('Environment'), 'shell-only');
    await userEvent.click(screen.getByRole('button', { name: 'Run' }));
    expect(await screen.findByText(/has no python \(its languages: bash\)/)).toBeInTheDocument();
  });

  it('says so when the server is unreachable', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => Promise.reject(new TypeError('Failed to fetch'))));
    renderAt('/', routes);
    await userEvent.click(screen.getByRole('button', { name: 'Run' }));
    await waitFor(() => expect(screen.getByRole('alert')).toHaveTextContent(/cannot be reached/));
  });
});
