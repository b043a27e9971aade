/** Plain-language explanations of how a run ended. */
import type { EvaluationRecord, RunResult } from '../api/models';
import { formatBytes, formatSeconds } from './format';

export type Tone = 'ok' | 'warn' | 'bad' | 'info' | 'muted';

export interface Explanation {
  /** Short badge text, e.g. "Exited 0", "Memory limit". */
  label: string;
  /** One sentence, e.g. "Stopped: used more than the 256 MB memory limit". */
  title: string;
  /** Optional further detail. */
  detail?: string;
  tone: Tone;
}

export const SIGNALS: Record<string, string> = {
  SIGSEGV: 'segmentation fault: the program touched memory it may not use',
  SIGABRT: 'aborted: the program called abort(), often a failed assertion',
  SIGKILL: 'killed: forcibly stopped, by the platform or the kernel',
  SIGFPE: 'arithmetic error, such as an integer division by zero',
  SIGBUS: 'bus error: a misaligned or invalid memory access',
  SIGILL: 'illegal instruction',
  SIGTERM: 'asked to terminate',
  SIGINT: 'interrupted',
  SIGHUP: 'hang-up',
  SIGQUIT: 'quit',
  SIGPIPE: 'broken pipe: wrote to a pipe nobody reads',
  SIGALRM: 'alarm clock',
  SIGXCPU: 'CPU-time limit exceeded',
  SIGXFSZ: 'file-size limit exceeded',
  SIGSYS: 'bad system call: the sandbox blocked a forbidden system call',
  SIGTRAP: 'trace/breakpoint trap',
  SIGUSR1: 'user-defined signal 1',
  SIGUSR2: 'user-defined signal 2',
};

const SIGNAL_NUMBERS: Record<number, string> = {
  1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 4: 'SIGILL', 5: 'SIGTRAP', 6: 'SIGABRT', 7: 'SIGBUS',
  8: 'SIGFPE', 9: 'SIGKILL', 10: 'SIGUSR1', 11: 'SIGSEGV', 12: 'SIGUSR2', 13: 'SIGPIPE',
  14: 'SIGALRM', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ', 31: 'SIGSYS',
};

/** "SIGSEGV (segmentation fault)" */
export function signalName(sig: string): string {
  const meaning = SIGNALS[sig];
  return meaning ? `${sig} (${meaning.split(':')[0]})` : sig;
}

export function signalMeaning(sig: string | null | undefined): string | null {
  if (!sig) return null;
  return SIGNALS[sig] ?? 'a signal from the operating system';
}

export function exitCodeMeaning(code: number | null | undefined): string | null {
  if (code === null || code === undefined) return null;
  if (code === 0) return 'success';
  if (code === 1) return 'general error (an uncaught exception, a failed check, …)';
  if (code === 2) return 'misuse or usage error (often a syntax or argument error)';
  if (code === 124) return 'timed out (by convention of timeout(1))';
  if (code === 126) return 'command found but not executable';
  if (code === 127) return 'command not found';
  if (code > 128 && code < 160) {
    const sig = SIGNAL_NUMBERS[code - 128];
    return sig ? `a child process was killed by ${sig} (128 + ${code - 128})` : `128 + signal ${code - 128}`;
  }
  return 'the program reported failure';
}

function limitsOf(r: RunResult) {
  return r.limits;
}

export function explainResult(r: RunResult): Explanation {
  const limits = limitsOf(r);
  switch (r.termination) {
    case 'exited': {
      if (r.signal) {
        if (r.signal === 'SIGKILL' && r.events?.oom_kill > 0) {
          return {
            label: 'Memory limit',
            title: `Stopped: used more than the ${limits.memory_mb} MB memory limit`,
            detail: 'The kernel killed the program (out of memory).',
            tone: 'bad',
          };
        }
        return {
          label: r.signal,
          title: `Killed by ${signalName(r.signal)}`,
          detail: signalMeaning(r.signal) ?? undefined,
          tone: 'bad',
        };
      }
      if (r.exit_code === 0) return { label: 'Exited 0', title: 'Exited with code 0', detail: 'The program finished normally.', tone: 'ok' };
      return {
        label: `Exited ${r.exit_code}`,
        title: `Exited with code ${r.exit_code}`,
        detail: `Non-zero exit: ${exitCodeMeaning(r.exit_code)}.`,
        tone: 'warn',
      };
    }
    case 'timeout': {
      const cpuBound = limits.cpu_s > 0 && r.cpu_ms >= limits.cpu_s * 1000 * 0.95;
      return cpuBound
        ? { label: 'CPU limit', title: `Stopped: used more than the ${formatSeconds(limits.cpu_s)} CPU-time limit`, tone: 'bad' }
        : { label: 'Timeout', title: `Stopped: ran longer than the ${formatSeconds(limits.timeout_s)} time limit`, tone: 'bad' };
    }
    case 'memory_limit':
      return { label: 'Memory limit', title: `Stopped: used more than the ${limits.memory_mb} MB memory limit`, tone: 'bad' };
    case 'output_limit':
      return {
        label: 'Output limit',
        title: `Stopped: wrote more than the ${formatBytes(limits.output_bytes)} output limit`,
        tone: 'bad',
      };
    case 'compile_error':
      return {
        label: 'Compile error',
        title: 'Did not compile',
        detail: 'The compiler rejected the program; see stderr for its messages.',
        tone: 'warn',
      };
    case 'cancelled':
      return { label: 'Cancelled', title: 'Cancelled before it finished', tone: 'muted' };
    default:
      return { label: String(r.termination), title: `Ended: ${String(r.termination)}`, tone: 'info' };
  }
}

export function explain(rec: Pick<EvaluationRecord, 'status' | 'result' | 'error'>): Explanation {
  if (rec.result) return explainResult(rec.result);
  switch (rec.status) {
    case 'queued':
      return { label: 'Queued', title: 'Waiting in the queue', tone: 'info' };
    case 'running':
      return { label: 'Running', title: 'Running now', tone: 'info' };
    case 'cancelled':
      return { label: 'Cancelled', title: 'Cancelled before it finished', tone: 'muted' };
    case 'error':
      return {
        label: 'Platform error',
        title: 'The platform could not run this program',
        detail: rec.error ?? undefined,
        tone: 'bad',
      };
    default:
      return { label: rec.status, title: rec.status, tone: 'muted' };
  }
}

export function verdictExplanation(r: RunResult | null | undefined, hasTest: boolean): Explanation | null {
  if (!r || !r.verdict) return null;
  if (r.verdict === 'passed') {
    return { label: 'Passed', title: hasTest ? 'Passed: the tests succeeded' : 'Passed: the output matched the expected output', tone: 'ok' };
  }
  return { label: 'Failed', title: hasTest ? 'Failed: the tests did not pass' : 'Failed: the output did not match the expected output', tone: 'bad' };
}

/** Human notes for kernel events read from the run's cgroup. */
export function kernelEventNotes(r: RunResult): string[] {
  const notes: string[] = [];
  const ev = r.events ?? { oom_kill: 0, pids_limit: 0, memory_limit_hits: 0 };
  if (ev.oom_kill > 0) {
    notes.push(
      `The kernel's out-of-memory killer stopped ${ev.oom_kill === 1 ? 'a process' : `${ev.oom_kill} processes`} at the ${r.limits.memory_mb} MB limit.`,
    );
  }
  if (ev.pids_limit > 0) {
    notes.push(
      `Process creation was refused ${ev.pids_limit} time${ev.pids_limit === 1 ? '' : 's'} at the ${r.limits.pids}-process limit (fork/thread creation failed).`,
    );
  }
  return notes;
}
