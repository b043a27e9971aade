/**
 * Reducer for an evaluation's live event stream. Tolerant by design: any event name
 * is accepted, output chunks may arrive as {data}, {text}, {chunk} or a bare string,
 * and events replayed after a reconnect (same id) are applied once.
 */
import type { EvaluationRecord, Status } from '../api/models';

export interface LiveState {
  status: Status | null;
  stdout: string;
  stderr: string;
  final: boolean;
  record: EvaluationRecord | null;
  seen: string[]; // ids already applied (bounded)
  events: number;
}

export const initialLive: LiveState = {
  status: null,
  stdout: '',
  stderr: '',
  final: false,
  record: null,
  seen: [],
  events: 0,
};

export type LiveAction =
  | { type: 'event'; event: string; data: unknown; id: string | null }
  | { type: 'reset' };

const STATUSES: readonly string[] = ['queued', 'running', 'completed', 'cancelled', 'error'];
const FINAL = new Set(['result', 'end', 'done', 'complete', 'completed', 'finished']);

function chunkText(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data && typeof data === 'object') {
    const o = data as Record<string, unknown>;
    for (const k of ['data', 'text', 'chunk', 'output']) {
      if (typeof o[k] === 'string') return o[k] as string;
    }
  }
  return '';
}

function asRecord(data: unknown): EvaluationRecord | null {
  if (!data || typeof data !== 'object') return null;
  const o = data as Record<string, unknown>;
  if (o.record && typeof o.record === 'object') return o.record as EvaluationRecord;
  if (typeof o.id === 'string' && typeof o.status === 'string') return o as unknown as EvaluationRecord;
  return null;
}

function statusOf(data: unknown): Status | null {
  if (typeof data === 'string' && STATUSES.includes(data)) return data as Status;
  if (data && typeof data === 'object') {
    const s = (data as Record<string, unknown>).status;
    if (typeof s === 'string' && STATUSES.includes(s)) return s as Status;
  }
  return null;
}

export function liveReducer(state: LiveState, action: LiveAction): LiveState {
  if (action.type === 'reset') return initialLive;
  const { event, data, id } = action;
  if (id !== null && state.seen.includes(id)) return state;
  const seen = id === null ? state.seen : [...state.seen.slice(-499), id];
  const next: LiveState = { ...state, seen, events: state.events + 1 };

  if (event === 'stdout' || event === 'stderr') {
    next[event] = state[event] + chunkText(data);
    if (next.status === null || next.status === 'queued') next.status = 'running';
    return next;
  }
  if (event === 'output' && data && typeof data === 'object') {
    const stream = (data as Record<string, unknown>).stream;
    if (stream === 'stdout' || stream === 'stderr') next[stream] = state[stream] + chunkText(data);
    return next;
  }
  if (FINAL.has(event)) {
    next.final = true;
    const record = asRecord(data);
    if (record) {
      next.record = record;
      next.status = record.status;
    } else {
      next.status = statusOf(data) ?? state.status;
    }
    return next;
  }
  // `status` and anything else carrying a status field.
  const s = statusOf(data);
  if (s) next.status = s;
  return next;
}
