// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { initialLive, liveReducer, type LiveAction } from './live';

const ev = (event: string, data: unknown, id: string | null = null): LiveAction => ({ type: 'event', event, data, id });

describe('liveReducer', () => {
  it('applies status and output chunks in order', () => {
    let s = liveReducer(initialLive, ev('status', { status: 'queued' }, '1'));
    expect(s.status).toBe('queued');
    s = liveReducer(s, ev('status', { status: 'running', attempt: 1 }, '2'));
    s = liveReducer(s, ev('stdout', { data: 'step 1\n' }, '3'));
    s = liveReducer(s, ev('stderr', { data: 'warn\n' }, '4'));
    s = liveReducer(s, ev('stdout', { data: 'step 2\n' }, '5'));
    expect(s.stdout).toBe('step 1\nstep 2\n');
    expect(s.stderr).toBe('warn\n');
    expect(s.status).toBe('running');
    expect(s.final).toBe(false);
  });

  it('ignores events replayed with an id already seen', () => {
    let s = liveReducer(initialLive, ev('stdout', { data: 'a' }, '7'));
    s = liveReducer(s, ev('stdout', { data: 'a' }, '7'));
    expect(s.stdout).toBe('a');
  });

  it('takes the final record from a result event', () => {
    const record = { id: 'e1', status: 'completed', result: { termination: 'exited' } };
    const s = liveReducer(initialLive, ev('result', record, '9'));
    expect(s.final).toBe(true);
    expect(s.status).toBe('completed');
    expect(s.record?.id).toBe('e1');
  });

  it('treats end/done as final even without a record', () => {
    const s = liveReducer(initialLive, ev('end', { status: 'cancelled' }));
    expect(s.final).toBe(true);
    expect(s.status).toBe('cancelled');
  });

  it('tolerates other shapes and unknown events', () => {
    let s = liveReducer(initialLive, ev('stdout', 'bare string'));
    s = liveReducer(s, ev('output', { stream: 'stderr', text: 'x' }));
    s = liveReducer(s, ev('heartbeat', { ts: 1 }));
    s = liveReducer(s, ev('message', 'not json'));
    expect(s.stdout).toBe('bare string');
    expect(s.stderr).toBe('x');
    expect(s.events).toBe(4);
    expect(liveReducer(s, { type: 'reset' })).toBe(initialLive);
  });
});
