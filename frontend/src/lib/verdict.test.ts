// @vitest-environment node
import { describe, expect, it } from 'vitest';
import type { RunResult } from '../api/models';
import { exitCodeMeaning, explain, explainResult, kernelEventNotes, signalMeaning, verdictExplanation } from './verdict';

const limits = { timeout_s: 10, cpu_s: 10, memory_mb: 256, pids: 64, cpus: 1, output_bytes: 1048576, disk_mb: 64 };

function result(over: Partial<RunResult>): RunResult {
  return {
    termination: 'exited',
    exit_code: 0,
    signal: null,
    stdout: '',
    stderr: '',
    stdout_truncated: false,
    stderr_truncated: false,
    stdout_inline_truncated: false,
    stderr_inline_truncated: false,
    wall_ms: 12,
    cpu_ms: 8,
    peak_memory_bytes: 7_000_000,
    files: [],
    runtime: { name: 'runc', version: '1.1.5' },
    limits,
    events: { oom_kill: 0, pids_limit: 0, memory_limit_hits: 0 },
    verdict: null,
    ...over,
  };
}

describe('explainResult', () => {
  it('explains a clean exit', () => {
    const e = explainResult(result({}));
    expect(e.title).toBe('Exited with code 0');
    expect(e.label).toBe('Exited 0');
    expect(e.tone).toBe('ok');
  });

  it('explains a non-zero exit with the meaning of the code', () => {
    const e = explainResult(result({ exit_code: 1 }));
    expect(e.title).toBe('Exited with code 1');
    expect(e.tone).toBe('warn');
    expect(e.detail).toMatch(/general error/);
  });

  it('explains a signal in plain words', () => {
    const e = explainResult(result({ exit_code: null, signal: 'SIGSEGV' }));
    expect(e.title).toBe('Killed by SIGSEGV (segmentation fault)');
    expect(e.label).toBe('SIGSEGV');
    expect(e.tone).toBe('bad');
  });

  it('explains the memory limit with its size', () => {
    expect(explainResult(result({ termination: 'memory_limit', exit_code: null, signal: 'SIGKILL' })).title).toBe(
      'Stopped: used more than the 256 MB memory limit',
    );
  });

  it('treats SIGKILL with an OOM kill as the memory limit', () => {
    const e = explainResult(result({ exit_code: null, signal: 'SIGKILL', events: { oom_kill: 1, pids_limit: 0, memory_limit_hits: 0 } }));
    expect(e.label).toBe('Memory limit');
  });

  it('tells a wall-clock timeout from a CPU-time one', () => {
    expect(explainResult(result({ termination: 'timeout', wall_ms: 10_000, cpu_ms: 100 })).title).toBe(
      'Stopped: ran longer than the 10 s time limit',
    );
    expect(
      explainResult(result({ termination: 'timeout', wall_ms: 2_100, cpu_ms: 2_000, limits: { ...limits, cpu_s: 2 } })).title,
    ).toBe('Stopped: used more than the 2 s CPU-time limit');
  });

  it('explains output limit, compile error and cancel', () => {
    expect(explainResult(result({ termination: 'output_limit', limits: { ...limits, output_bytes: 65536 } })).title).toBe(
      'Stopped: wrote more than the 64 KB output limit',
    );
    expect(explainResult(result({ termination: 'compile_error', exit_code: 1 })).label).toBe('Compile error');
    expect(explainResult(result({ termination: 'cancelled' })).title).toBe('Cancelled before it finished');
  });
});

describe('explain (record)', () => {
  it('covers records without a result', () => {
    expect(explain({ status: 'queued', result: null, error: null }).title).toBe('Waiting in the queue');
    expect(explain({ status: 'running', result: null, error: null }).label).toBe('Running');
    const err = explain({ status: 'error', result: null, error: 'runtime crashed' });
    expect(err.label).toBe('Platform error');
    expect(err.detail).toBe('runtime crashed');
  });
});

describe('meanings', () => {
  it('knows common exit codes and signals', () => {
    expect(exitCodeMeaning(0)).toBe('success');
    expect(exitCodeMeaning(137)).toMatch(/SIGKILL/);
    expect(exitCodeMeaning(null)).toBeNull();
    expect(signalMeaning('SIGFPE')).toMatch(/division by zero/);
    expect(signalMeaning('SIGWEIRD')).toMatch(/signal/);
  });

  it('explains the verdict', () => {
    expect(verdictExplanation(result({ verdict: 'passed' }), false)?.title).toMatch(/matched the expected output/);
    expect(verdictExplanation(result({ verdict: 'failed' }), true)?.title).toMatch(/tests did not pass/);
    expect(verdictExplanation(result({}), false)).toBeNull();
  });

  it('describes kernel events', () => {
    const notes = kernelEventNotes(result({ events: { oom_kill: 2, pids_limit: 5, memory_limit_hits: 0 } }));
    expect(notes[0]).toMatch(/stopped 2 processes at the 256 MB limit/);
    expect(notes[1]).toMatch(/refused 5 times at the 64-process limit/);
    expect(kernelEventNotes(result({}))).toEqual([]);
  });
});
