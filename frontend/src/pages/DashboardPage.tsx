import { useQuery } from '@tanstack/react-query';
import { Link } from 'react-router-dom';
import { getDeadLetters, getHealth, getQueue, getWorkers, listEvaluations } from '../api/client';
import type { EvaluationRecord, WorkerInfo } from '../api/models';
import { ErrorState, Spinner } from '../components/ui';
import { relativeTime, shortId } from '../lib/format';
import { terminationCounts, throughput, type Bucket } from '../lib/throughput';

const HOUR = 3_600_000;

async function lastHour(): Promise<EvaluationRecord[]> {
  const out: EvaluationRecord[] = [];
  const since = Date.now() - HOUR;
  let cursor: string | undefined;
  for (let i = 0; i < 10; i++) {
    const page = await listEvaluations({ cursor, limit: 200 });
    out.push(...page.items);
    const oldest = page.items[page.items.length - 1];
    if (!page.next_cursor || !oldest || new Date(oldest.created_at).getTime() < since) break;
    cursor = page.next_cursor;
  }
  return out;
}

function ThroughputChart({ buckets }: { buckets: Bucket[] }) {
  const w = 600;
  const h = 180;
  const pad = { l: 32, r: 8, t: 10, b: 24 };
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const bw = (w - pad.l - pad.r) / buckets.length;
  const y = (v: number) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  const total = buckets.reduce((a, b) => a + b.count, 0);
  const fmt = (ms: number) => new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${w} ${h}`} role="img" aria-label={`Throughput: ${total} evaluations finished in the last hour, in 5-minute bins`}>
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line x1={pad.l} x2={w - pad.r} y1={y(max * f)} y2={y(max * f)} className="chart-grid" />
            <text x={pad.l - 6} y={y(max * f) + 4} textAnchor="end" className="chart-axis">
              {Math.round(max * f)}
            </text>
          </g>
        ))}
        {buckets.map((b, i) => {
          const x = pad.l + i * bw + 2;
          const ok = b.count - b.failed;
          return (
            <g key={b.start}>
              <title>{`${fmt(b.start)}–${fmt(b.end)}: ${b.count} finished, ${b.failed} not clean`}</title>
              <rect x={x} width={bw - 4} y={y(b.count)} height={y(0) - y(b.count)} className="chart-bar-bad" rx={2} />
              <rect x={x} width={bw - 4} y={y(ok)} height={y(0) - y(ok)} className="chart-bar" rx={2} />
            </g>
          );
        })}
        {buckets.map((b, i) =>
          i % 3 === 0 ? (
            <text key={`t${b.start}`} x={pad.l + i * bw} y={h - 6} className="chart-axis">
              {fmt(b.start)}
            </text>
          ) : null,
        )}
      </svg>
      <figcaption className="muted small">
        {total} finished in the last hour ·{' '}
        <span className="legend legend-ok" /> exited 0 / passed <span className="legend legend-bad" /> other endings
      </figcaption>
    </figure>
  );
}

/** Sandboxes a worker hosts: `running / capacity` for a host; an embedded server hosts
 * its own with no cap of its own (`running`); a worker that hosts none, `—`. */
export function sandboxCount(w: Pick<WorkerInfo, 'sandbox_capacity' | 'sandboxes_running'>): string {
  const running = w.sandboxes_running ?? 0;
  const capacity = w.sandbox_capacity ?? 0;
  if (capacity > 0) return `${running} / ${capacity}`;
  return running > 0 ? String(running) : '—';
}

export function DashboardPage() {
  const queue = useQuery({ queryKey: ['queue'], queryFn: getQueue, refetchInterval: 2000 });
  const health = useQuery({ queryKey: ['health'], queryFn: getHealth, refetchInterval: 10_000 });
  const recent = useQuery({ queryKey: ['dashboard-recent'], queryFn: lastHour, refetchInterval: 10_000 });
  const workers = useQuery({ queryKey: ['workers'], queryFn: getWorkers, refetchInterval: 5000, retry: false });
  const dead = useQuery({ queryKey: ['dead-letters'], queryFn: getDeadLetters, refetchInterval: 15_000, retry: false });
  const now = Date.now();
  const buckets = throughput(recent.data ?? [], now);
  const terms = terminationCounts(recent.data ?? [], now);
  const termTotal = Object.values(terms).reduce((a, b) => a + b, 0);

  return (
    <div className="page">
      <div className="page-head">
        <h1>Dashboard</h1>
        <p className="muted">
          {health.data ? (health.data.ok ? (health.data.ready ? 'Server healthy and ready.' : 'Server up, not ready.') : 'Server unreachable.') : 'Checking server…'}
        </p>
      </div>

      <div className="stat-grid">
        {queue.isError && !queue.data ? (
          <div className="span-all">
            <ErrorState error={queue.error} what="queue" onRetry={() => void queue.refetch()} />
          </div>
        ) : !queue.data ? (
          <Spinner label="Loading queue" />
        ) : (
          <>
            {(['high', 'normal', 'low'] as const).map((p) => (
              <div className="stat card" key={p}>
                <span className="stat-label">Queued · {p}</span>
                <span className="stat-value" data-testid={`queue-${p}`}>
                  {queue.data.depth[p] ?? 0}
                </span>
              </div>
            ))}
            <div className="stat card">
              <span className="stat-label">Running now</span>
              <span className="stat-value" data-testid="running">
                {queue.data.running}
                <span className="stat-sub"> / {queue.data.capacity || '—'}</span>
              </span>
              <div className="bar" aria-hidden="true">
                <div className="bar-fill bar-ok" style={{ width: `${queue.data.capacity ? Math.min(100, (queue.data.running / queue.data.capacity) * 100) : 0}%` }} />
              </div>
            </div>
          </>
        )}
      </div>

      <div className="dash-grid">
        <section className="card" aria-labelledby="tp-h">
          <h2 id="tp-h">Throughput, last hour</h2>
          {recent.isPending ? <Spinner label="Loading" /> : recent.isError ? <ErrorState error={recent.error} what="recent evaluations" /> : <ThroughputChart buckets={buckets} />}
        </section>
        <section className="card" aria-labelledby="term-h">
          <h2 id="term-h">How runs ended (last hour)</h2>
          {termTotal === 0 ? (
            <p className="muted small">No finished runs in the last hour.</p>
          ) : (
            <ul className="count-bars">
              {Object.entries(terms)
                .sort((a, b) => b[1] - a[1])
                .map(([k, n]) => (
                  <li key={k}>
                    <Link className="count-label" to={`/evaluations?termination=${encodeURIComponent(k)}`}>
                      {k.replace('_', ' ')}
                    </Link>
                    <span className="count-bar" aria-hidden="true">
                      <span className={`count-fill tone-${k === 'exited' ? 'ok' : k === 'cancelled' ? 'muted' : 'bad'}`} style={{ width: `${(n / termTotal) * 100}%` }} />
                    </span>
                    <span className="count-n num">{n}</span>
                  </li>
                ))}
            </ul>
          )}
        </section>
      </div>

      {workers.data && (
        <section className="card" aria-labelledby="workers-h">
          <h2 id="workers-h">Workers</h2>
          {workers.data.length === 0 ? (
            <p className="muted small">No workers have reported in.</p>
          ) : (
            <div className="table-wrap">
              <table className="table" aria-label="Workers">
                <thead>
                  <tr>
                    <th scope="col">Worker</th>
                    <th scope="col">Evaluations</th>
                    <th scope="col" title="Agent sandboxes hosted / at most (crucible worker --sandboxes N)">
                      Sandboxes
                    </th>
                    <th scope="col">Last heartbeat</th>
                    <th scope="col">Status</th>
                  </tr>
                </thead>
                <tbody>
                  {workers.data.map((w) => {
                    const stale = w.last_heartbeat ? Date.now() - new Date(w.last_heartbeat).getTime() > 30_000 : true;
                    return (
                      <tr key={w.id} aria-label={`Worker ${w.id}`}>
                        <td className="mono" title={w.id}>
                          {w.host} <span className="muted small">{w.kind} · pid {w.pid}</span>
                        </td>
                        <td>
                          {w.running ?? 0} / {w.capacity ?? '—'}
                        </td>
                        <td data-testid="worker-sandboxes">{sandboxCount(w)}</td>
                        <td className={stale ? 'text-bad' : ''}>{relativeTime(w.last_heartbeat)}</td>
                        <td>{w.state === 'alive' && stale ? 'stale' : w.state}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          )}
        </section>
      )}

      {dead.data && (
        <section className="card" aria-labelledby="dead-h">
          <h2 id="dead-h">Dead letters</h2>
          {dead.data.length === 0 ? (
            <p className="muted small">No evaluations have exhausted their retries.</p>
          ) : (
            <ul className="dead">
              {dead.data.map((d) => (
                <li key={d.id}>
                  {d.evaluation_id ? (
                    <Link className="mono" to={`/evaluations/${encodeURIComponent(d.evaluation_id)}`}>
                      {shortId(d.evaluation_id)}
                    </Link>
                  ) : (
                    <span className="mono">{shortId(d.id)}</span>
                  )}{' '}
                  <span className="muted small">
                    {d.attempts ? `${d.attempts} attempts · ` : ''}
                    {d.reason} {d.created_at ? `· ${relativeTime(d.created_at)}` : ''}
                  </span>
                </li>
              ))}
            </ul>
          )}
        </section>
      )}
    </div>
  );
}
