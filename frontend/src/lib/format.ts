/** Formatting helpers shared by pages. Sizes use binary units written as KB/MB/GB. */

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s - m * 60);
  return `${m} min ${rest} s`;
}

export function formatSeconds(s: number): string {
  return `${Number.isInteger(s) ? s : Number(s.toFixed(2))} s`;
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  });
}

export function relativeTime(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '—';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const diff = Math.round((now - t) / 1000);
  if (Math.abs(diff) < 5) return 'just now';
  const abs = Math.abs(diff);
  const [v, unit] =
    abs < 60 ? [abs, 's'] : abs < 3600 ? [Math.round(abs / 60), 'min'] : abs < 86400 ? [Math.round(abs / 3600), 'h'] : [Math.round(abs / 86400), 'd'];
  return diff >= 0 ? `${v} ${unit} ago` : `in ${v} ${unit}`;
}

export function durationBetween(a: string | null | undefined, b: string | null | undefined): number | null {
  if (!a || !b) return null;
  const d = new Date(b).getTime() - new Date(a).getTime();
  return Number.isNaN(d) ? null : Math.max(0, d);
}

/** "ev_3be90748bb4e186f7e86" → "ev_3be90748": enough to tell rows apart. */
/** sha256:0123456789ab… → 0123456789ab (what a person compares at a glance). */
export function shortDigest(digest: string | null | undefined): string {
  if (!digest) return '—';
  return digest.replace(/^sha256:/, '').slice(0, 12);
}

export function shortId(id: string): string {
  const m = /^([a-z]{1,4}_)(.*)$/.exec(id);
  return m ? m[1] + m[2].slice(0, 8) : id.slice(0, 8);
}

/**
 * A sandbox host (a worker id, `kind@host:pid:token`) as `host:pid`, enough to tell
 * the hosts of a cluster apart; the whole id is the caller's title.
 */
export function hostLabel(workerId: string | null | undefined): string {
  if (!workerId) return '—';
  const m = /^[^@]+@(.+):(\d+):[0-9a-f]+$/.exec(workerId);
  return m ? `${m[1]}:${m[2]}` : workerId;
}

export function formatClock(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function percent(x: number | null | undefined, digits = 0): string {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  return `${(x * 100).toFixed(digits)}%`;
}
