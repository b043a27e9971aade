import type { EvaluationRecord } from '../api/models';

/** Lower sorts first: failures, then unfinished, then successes. */
export function failureRank(r: EvaluationRecord): number {
  if (r.status === 'error') return 0;
  const res = r.result;
  if (res?.verdict === 'failed') return 1;
  if (res && (res.termination !== 'exited' || res.signal || (res.exit_code ?? 0) !== 0) && res.termination !== 'cancelled') return 2;
  if (r.status === 'cancelled' || res?.termination === 'cancelled') return 3;
  if (r.status === 'running') return 4;
  if (r.status === 'queued') return 5;
  return 6;
}

export function failuresFirst(items: EvaluationRecord[]): EvaluationRecord[] {
  return items
    .map((r, i) => [r, i] as const)
    .sort((a, b) => failureRank(a[0]) - failureRank(b[0]) || a[1] - b[1])
    .map(([r]) => r);
}
