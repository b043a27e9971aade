// @vitest-environment node
import { describe, expect, it } from 'vitest';
import type { EvaluationRecord, RunResult } from '../api/models';
import { normalizeBatch, normalizeQueue } from '../api/client';
import { failuresFirst } from './batch';
import { terminationCounts, throughput } from './throughput';

function rec(id: string, status: EvaluationRecord['status'], result: Partial<RunResult> | null, finished_at: string | null = null): EvaluationRecord {
  return {
    id,
    status,
    batch_id: null,
    created_at: '2026-01-01T00:00:00Z',
    started_at: null,
    finished_at,
    queue_wait_ms: null,
    attempts: 1,
    error: null,
    request: {} as EvaluationRecord['request'],
    result: result as RunResult | null,
  };
}

describe('batch helpers', () => {
  it('sorts failures first, keeping order within a rank', () => {
    const items = [
      rec('ok1', 'completed', { termination: 'exited', exit_code: 0, verdict: 'passed' }),
      rec('fail', 'completed', { termination: 'exited', exit_code: 0, verdict: 'failed' }),
      rec('run', 'running', null),
      rec('tle', 'completed', { termination: 'timeout', exit_code: null }),
      rec('err', 'error', null),
      rec('ok2', 'completed', { termination: 'exited', exit_code: 0, verdict: null }),
    ];
    expect(failuresFirst(items).map((r) => r.id)).toEqual(['err', 'fail', 'tle', 'run', 'ok1', 'ok2']);
  });

  it("normalises the server's batch summary", () => {
    const b = normalizeBatch({
      id: 'b1',
      count: 4,
      by_status: { completed: 3, running: 1 },
      by_termination: { exited: 3 },
      by_verdict: { passed: 2, failed: 1 },
      done: 3,
      progress: 0.75,
      pass_rate: 2 / 3,
      finished: false,
    });
    expect(b.counts?.status?.completed).toBe(3);
    expect(b.counts?.verdict).toEqual({ passed: 2, failed: 1 });
    expect(b.done).toBe(3);
    expect(b.finished).toBe(false);
    expect(b.progress).toBe(0.75);
    expect(normalizeBatch({ id: 'b', count: 2, counts: { status: { completed: 2 } } }).finished).toBe(true);
  });

  it('normalises the queue', () => {
    expect(normalizeQueue({ depth: { high: 1, normal: 2 }, running: 3, capacity: 4, queued: 3 })).toEqual({
      depth: { high: 1, normal: 2 },
      running: 3,
      capacity: 4,
    });
  });

  it('buckets throughput over the last hour', () => {
    const now = Date.parse('2026-01-01T01:00:00Z');
    const items = [
      rec('a', 'completed', { termination: 'exited', exit_code: 0 }, '2026-01-01T00:02:00Z'),
      rec('b', 'completed', { termination: 'timeout', exit_code: null }, '2026-01-01T00:58:00Z'),
      rec('c', 'completed', { termination: 'exited', exit_code: 0 }, '2025-12-31T23:00:00Z'),
      rec('d', 'running', null),
    ];
    const b = throughput(items, now);
    expect(b).toHaveLength(12);
    expect(b[0].count).toBe(1);
    expect(b[11]).toMatchObject({ count: 1, failed: 1 });
    expect(b.reduce((n, x) => n + x.count, 0)).toBe(2);
    expect(terminationCounts(items, now)).toEqual({ exited: 1, timeout: 1 });
  });
});
