/**
 * A long-lived sandbox's transcript as it happens: the stored execs (GET …/execs)
 * merged with its live event stream (`exec_started`, `output`, `exec_finished`,
 * `stopped`). Events replayed after a reconnect (same id) are applied once; an exec
 * known from both sources is one entry, keyed by its `seq`.
 */
import type { ExecRecord, SandboxRecord } from '../api/models';

export interface TranscriptEntry {
  seq: number;
  cmd: string[];
  cwd: string | null;
  user: string | null;
  startedAt: string;
  finishedAt: string | null;
  returncode: number | null;
  timedOut: boolean;
  /** the sandbox reached its memory limit during the exec */
  memoryLimit: boolean;
  durationMs: number | null;
  stdout: string;
  stderr: string;
  /** the text shown is a preview: the whole stream is at …/execs/{seq}/output/{stream} */
  previewTruncated: boolean;
  error: string | null;
}

export interface TranscriptState {
  entries: Record<number, TranscriptEntry>;
  /** the record from the stream's `status` or `stopped` event, when one came */
  record: SandboxRecord | null;
  stopped: boolean;
  seen: string[];
}

export const initialTranscript: TranscriptState = { entries: {}, record: null, stopped: false, seen: [] };

export type TranscriptAction =
  | { type: 'load'; execs: ExecRecord[] }
  | { type: 'event'; event: string; data: unknown; id: string | null }
  | { type: 'reset' };

function fromRecord(e: ExecRecord): TranscriptEntry {
  return {
    seq: e.seq,
    cmd: e.cmd,
    cwd: e.cwd,
    user: e.user,
    startedAt: e.started_at,
    finishedAt: e.finished_at,
    returncode: e.returncode,
    timedOut: e.timed_out,
    memoryLimit: e.memory_limit ?? false,
    durationMs: e.duration_ms,
    stdout: e.stdout,
    stderr: e.stderr,
    previewTruncated: !!(e.stdout_preview_truncated || e.stderr_preview_truncated),
    error: e.error ?? null,
  };
}

/** A finished record over what was seen live: the live text is kept when it is
 * longer (the record's may be a preview). */
function merge(old: TranscriptEntry | undefined, next: TranscriptEntry): TranscriptEntry {
  if (!old) return next;
  return {
    ...next,
    stdout: old.stdout.length > next.stdout.length ? old.stdout : next.stdout,
    stderr: old.stderr.length > next.stderr.length ? old.stderr : next.stderr,
  };
}

const isExec = (d: unknown): d is ExecRecord => !!d && typeof d === 'object' && typeof (d as ExecRecord).seq === 'number' && Array.isArray((d as ExecRecord).cmd);

export function transcriptReducer(state: TranscriptState, action: TranscriptAction): TranscriptState {
  if (action.type === 'reset') return initialTranscript;
  if (action.type === 'load') {
    const entries = { ...state.entries };
    for (const e of action.execs) {
      const existing = entries[e.seq];
      // The stored one is older than what the stream already said of a finished exec.
      if (existing?.finishedAt && !e.finished_at) continue;
      entries[e.seq] = merge(existing, fromRecord(e));
    }
    return { ...state, entries };
  }
  if (action.id !== null && state.seen.includes(action.id)) return state;
  const seen = action.id !== null ? [...state.seen.slice(-499), action.id] : state.seen;
  const { event, data } = action;
  if ((event === 'exec_started' || event === 'exec_finished') && isExec(data)) {
    const existing = state.entries[data.seq];
    if (event === 'exec_started' && existing) return { ...state, seen };
    return { ...state, seen, entries: { ...state.entries, [data.seq]: merge(existing, fromRecord(data)) } };
  }
  if (event === 'output' && data && typeof data === 'object') {
    const { seq, stream, data: text } = data as { seq: number; stream: string; data: string };
    const entry = state.entries[seq];
    if (!entry || entry.finishedAt || (stream !== 'stdout' && stream !== 'stderr')) return { ...state, seen };
    return { ...state, seen, entries: { ...state.entries, [seq]: { ...entry, [stream]: entry[stream] + String(text) } } };
  }
  if (event === 'status' || event === 'stopped') {
    const record = data && typeof data === 'object' ? (data as SandboxRecord) : state.record;
    return { ...state, seen, record, stopped: state.stopped || event === 'stopped' };
  }
  return { ...state, seen };
}

/** The entries in order. */
export function orderedEntries(state: TranscriptState): TranscriptEntry[] {
  return Object.values(state.entries).sort((a, b) => a.seq - b.seq);
}

/** A command as a shell would read it: `bash -lc 'echo hi'`. */
export function formatCommand(cmd: string[]): string {
  return cmd.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** The one-line outcome of an exec. */
export function outcome(e: TranscriptEntry): { text: string; tone: 'ok' | 'bad' | 'warn' | 'muted' } {
  if (e.error) return { text: e.error, tone: 'warn' };
  if (e.finishedAt === null || e.returncode === null) return { text: 'running…', tone: 'muted' };
  if (e.memoryLimit) {
    const how = e.timedOut ? 'timed out' : `exit ${e.returncode}`;
    return { text: `memory limit reached (${how})`, tone: 'bad' };
  }
  if (e.timedOut) return { text: `timed out (exit ${e.returncode})`, tone: 'warn' };
  return { text: `exit ${e.returncode}`, tone: e.returncode === 0 ? 'ok' : 'bad' };
}

const REASONS: Record<string, string> = {
  deleted: 'stopped on request',
  ttl: 'reached its time to live',
  idle_timeout: 'idle for too long',
  crashed: 'its init died',
  lost: 'the server hosting it died',
  shutdown: 'the server hosting it stopped',
};

/** Why a sandbox stopped, in words. */
export function stopReason(reason: string | null | undefined): string {
  return reason ? (REASONS[reason] ?? reason) : '';
}
