import { describe, expect, it } from 'vitest';
import type { ExecRecord } from '../api/models';
import { formatCommand, initialTranscript, orderedEntries, outcome, stopReason, transcriptReducer, type TranscriptAction } from './transcript';

function exec(seq: number, over: Partial<ExecRecord> = {}): ExecRecord {
  return {
    sandbox_id: 'sbx_1', seq, cmd: ['bash', '-lc', `echo ${seq}`], cwd: null, user: null,
    started_at: '2026-01-01T00:00:00Z', finished_at: null, returncode: null, timed_out: false, duration_ms: null,
    stdout: '', stderr: '', stdout_truncated: false, stderr_truncated: false, ...over,
  } as ExecRecord;
}
const ev = (event: string, data: unknown, id: string | null = null): TranscriptAction => ({ type: 'event', event, data, id });
const run = (...actions: TranscriptAction[]) => actions.reduce(transcriptReducer, initialTranscript);

describe('transcriptReducer', () => {
  it('builds an exec from its start, output chunks and end', () => {
    const s = run(
      ev('exec_started', exec(1), '1'),
      ev('output', { seq: 1, stream: 'stdout', data: 'hel' }, '2'),
      ev('output', { seq: 1, stream: 'stdout', data: 'lo\n' }, '3'),
      ev('output', { seq: 1, stream: 'stderr', data: 'warn' }, '4'),
    );
    expect(orderedEntries(s)[0]).toMatchObject({ stdout: 'hello\n', stderr: 'warn', returncode: null });
    expect(outcome(orderedEntries(s)[0]).text).toBe('running…');
    const done = transcriptReducer(s, ev('exec_finished', exec(1, { finished_at: '2026-01-01T00:00:01Z', returncode: 0, duration_ms: 12, stdout: 'hello\n', stderr: 'warn' }), '5'));
    expect(orderedEntries(done)[0]).toMatchObject({ returncode: 0, durationMs: 12, stdout: 'hello\n' });
    expect(outcome(orderedEntries(done)[0])).toEqual({ text: 'exit 0', tone: 'ok' });
  });

  it('applies a replayed event once', () => {
    const chunk = ev('output', { seq: 1, stream: 'stdout', data: 'x' }, '7');
    const s = run(ev('exec_started', exec(1), '6'), chunk, chunk);
    expect(orderedEntries(s)[0].stdout).toBe('x');
  });

  it('keeps the longer live output over a finished preview', () => {
    const s = run(
      ev('exec_started', exec(1), '1'),
      ev('output', { seq: 1, stream: 'stdout', data: 'a'.repeat(100) }, '2'),
      ev('exec_finished', exec(1, { finished_at: 't', returncode: 0, stdout: 'a'.repeat(10), stdout_preview_truncated: true }), '3'),
    );
    expect(orderedEntries(s)[0]).toMatchObject({ stdout: 'a'.repeat(100), previewTruncated: true });
  });

  it('merges the stored transcript with the stream, in order, without going back', () => {
    const finished = exec(2, { finished_at: 't', returncode: 3 });
    const s = run(ev('exec_finished', finished, '9'), { type: 'load', execs: [exec(1, { finished_at: 't', returncode: 0 }), exec(2)] });
    expect(orderedEntries(s).map((e) => [e.seq, e.returncode])).toEqual([[1, 0], [2, 3]]);
    expect(outcome(orderedEntries(s)[1])).toEqual({ text: 'exit 3', tone: 'bad' });
  });

  it('ends with stopped, carrying the record', () => {
    const s = run(ev('status', { id: 'sbx_1', status: 'running' }, '1'), ev('stopped', { id: 'sbx_1', status: 'stopped', stop_reason: 'ttl' }, '2'));
    expect(s.stopped).toBe(true);
    expect(s.record?.stop_reason).toBe('ttl');
    expect(stopReason(s.record?.stop_reason)).toBe('reached its time to live');
  });

  it('says why an exec has no result', () => {
    const s = run({ type: 'load', execs: [exec(1, { finished_at: 't', error: 'the sandbox stopped: deleted' })] });
    expect(outcome(orderedEntries(s)[0])).toEqual({ text: 'the sandbox stopped: deleted', tone: 'warn' });
    const t = run({ type: 'load', execs: [exec(1, { finished_at: 't', returncode: 137, timed_out: true })] });
    expect(outcome(orderedEntries(t)[0]).text).toBe('timed out (exit 137)');
    const m = run({ type: 'load', execs: [exec(1, { finished_at: 't', returncode: 137, memory_limit: true })] });
    expect(outcome(orderedEntries(m)[0])).toEqual({ text: 'memory limit reached (exit 137)', tone: 'bad' });
  });
});

describe('formatCommand', () => {
  it('quotes what a shell would split', () => {
    expect(formatCommand(['bash', '-lc', 'echo hi'])).toBe("bash -lc 'echo hi'");
    expect(formatCommand(['echo', "it's"])).toBe("echo 'it'\\''s'");
    expect(formatCommand(['ls', '/tmp'])).toBe('ls /tmp');
  });
});
