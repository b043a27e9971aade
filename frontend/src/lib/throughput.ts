import type { EvaluationRecord } from '../api/models';

export interface Bucket {
  start: number; // ms since epoch
  end: number;
  count: number;
  failed: number;
}

/** Finished evaluations per time bucket over the window ending at `now`. */
export function throughput(records: EvaluationRecord[], now: number, windowMs = 3_600_000, buckets = 12): Bucket[] {
  const size = windowMs / buckets;
  const start = now - windowMs;
  const out: Bucket[] = Array.from({ length: buckets }, (_, i) => ({ start: start + i * size, end: start + (i + 1) * size, count: 0, failed: 0 }));
  for (const r of records) {
    if (!r.finished_at) continue;
    const t = new Date(r.finished_at).getTime();
    if (Number.isNaN(t) || t < start || t > now) continue;
    const i = Math.min(buckets - 1, Math.floor((t - start) / size));
    out[i].count += 1;
    const res = r.result;
    if (r.status === 'error' || res?.verdict === 'failed' || (res && (res.termination !== 'exited' || res.exit_code !== 0))) out[i].failed += 1;
  }
  return out;
}

/** How finished runs in the window ended. */
export function terminationCounts(records: EvaluationRecord[], now: number, windowMs = 3_600_000): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of records) {
    if (!r.finished_at) continue;
    const t = new Date(r.finished_at).getTime();
    if (t < now - windowMs || t > now) continue;
    const key = r.result?.termination ?? (r.status === 'error' ? 'platform_error' : r.status);
    out[key] = (out[key] ?? 0) + 1;
  }
  return out;
}
