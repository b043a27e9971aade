import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { BatchesPage } from './BatchesPage';
import { json, mockFetch, renderAt } from '../test-utils';

afterEach(() => {
  vi.unstubAllGlobals();
  localStorage.clear();
});

const routes = [
  { path: '/batches', element: <BatchesPage /> },
  { path: '/batches/:id', element: <p>batch page</p> },
];

describe('BatchesPage', () => {
  it('previews pasted JSONL and blocks submission while a line is bad', async () => {
    renderAt('/batches', routes);
    fireEvent.change(screen.getByLabelText('Or paste JSONL'), {
      target: { value: '{"language":"python","code":"print(1)"}\n{oops' },
    });
    expect(screen.getByText(/1 item ready, 1 line with problems/)).toBeInTheDocument();
    expect(screen.getByText(/Line 2: not valid JSON/)).toBeInTheDocument();
    expect(screen.getByRole('button', { name: /Submit/ })).toBeDisabled();
  });

  it('submits items with defaults and opens the batch', async () => {
    const fetchMock = mockFetch({ 'POST /api/v1/batches': () => json({ id: 'b123', count: 6 }, 202) });
    renderAt('/batches', routes);
    await userEvent.click(screen.getByRole('button', { name: 'Load example' }));
    await userEvent.click(screen.getByRole('button', { name: 'Submit 6 items' }));
    expect(await screen.findByText('batch page')).toBeInTheDocument();
    const body = JSON.parse(fetchMock.mock.calls[0][1]!.body as string);
    expect(body.items).toHaveLength(6);
    expect(body.defaults).toEqual({ priority: 'low' });
  });

  it('points server-side item errors at JSONL lines', async () => {
    mockFetch({
      'POST /api/v1/batches': () =>
        json({ detail: 'x', errors: [{ field: 'items.1.limits.memory_mb', reason: 'too big', in: 'body' }] }, 422),
    });
    renderAt('/batches', routes);
    fireEvent.change(screen.getByLabelText('Or paste JSONL'), {
      target: { value: '{"language":"python","code":"1"}\n\n{"language":"python","code":"2","limits":{"memory_mb":1e9}}' },
    });
    await userEvent.click(screen.getByRole('button', { name: /Submit/ }));
    expect(await screen.findByText('Line 3 (limits.memory_mb): too big')).toBeInTheDocument();
  });
});
