import { useState } from 'react';
import { Link, useParams } from 'react-router-dom';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { batchEventsUrl, cancelBatch, getBatch, listEvaluations, normalizeBatch } from '../api/client';
import type { EvaluationRecord } from '../api/models';
import { subscribe } from '../api/sse';
import { Badge, Empty, ErrorState, Spinner, StatusBadge } from '../components/ui';
import { failuresFirst } from '../lib/batch';
import { formatMs, percent, shortId } from '../lib/format';
import { explain } from '../lib/verdict';
import { useThrottled } from '../hooks';
import { useEffect } from 'react';

const SHOW_STEP = 100;

function CountBars({ title, counts, tones }: { title: string; counts: Record<string, number>; tones?: Record<string, string> }) {
  const entries = Object.entries(counts).filter(([, n]) => n > 0);
  const total = entries.reduce((a, [, n]) => a + n, 0);
  return (
    <section className="card" aria-label={title}>
      <h2>{title}</h2>
      {entries.length === 0 ? (
        <p className="muted small">None yet.</p>
      ) : (
        <ul className="count-bars">
          {entries
            .sort((a, b) => b[1] - a[1])
            .map(([k, n]) => (
              <li key={k}>
                <span className="count-label">{k.replace('_', ' ')}</span>
                <span className="count-bar" aria-hidden="true">
                  <span className={`count-fill tone-${tones?.[k] ?? 'info'}`} style={{ width: `${(n / total) * 100}%` }} />
                </span>
                <span className="count-n num">{n}</span>
              </li>
            ))}
        </ul>
      )}
    </section>
  );
}

const TERM_TONES: Record<string, string> = {
  exited: 'ok',
  timeout: 'bad',
  memory_limit: 'bad',
  output_limit: 'bad',
  compile_error: 'warn',
  cancelled: 'muted',
};

async function allItems(batchId: string): Promise<EvaluationRecord[]> {
  const out: EvaluationRecord[] = [];
  let cursor: string | undefined;
  for (let i = 0; i < 20; i++) {
    const page = await listEvaluations({ batch_id: batchId, cursor, limit: 100 });
    out.push(...page.items);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return out;
}

// Polled only while the batch's event stream is down (it failed, or never opened):
// while it is up, its `progress` events carry the batch record itself.
const FALLBACK_POLL_MS = 10_000;

export function BatchPage() {
  const { id = '' } = useParams();
  const qc = useQueryClient();
  const [shown, setShown] = useState(SHOW_STEP);
  const [streamUp, setStreamUp] = useState(false);
  const batch = useQuery({
    queryKey: ['batch', id],
    queryFn: () => getBatch(id),
    refetchInterval: (q) => (q.state.data?.finished || streamUp ? false : FALLBACK_POLL_MS),
  });
  const done = !!batch.data?.finished;
  const items = useQuery({
    queryKey: ['batch-items', id],
    queryFn: () => allItems(id),
    enabled: !!batch.data,
    refetchInterval: done || streamUp ? false : FALLBACK_POLL_MS,
  });
  const refresh = useThrottled(() => {
    void qc.invalidateQueries({ queryKey: ['batch', id] });
    void qc.invalidateQueries({ queryKey: ['batch-items', id] });
  }, 1000);
  // The item list is many pages: re-read it at most every 3 s, and only as items finish.
  const refreshItems = useThrottled(() => void qc.invalidateQueries({ queryKey: ['batch-items', id] }), 3000);

  // Live progress over SSE while the batch runs: each event is the batch record, so
  // the counts need no request; the slow poll above covers a missing stream.
  useEffect(() => {
    if (!batch.data || done) return;
    const close = subscribe(batchEventsUrl(id), {
      onOpen: () => setStreamUp(true),
      onError: () => setStreamUp(false),
      onEvent: (_event, data) => {
        if (data && typeof data === 'object') qc.setQueryData(['batch', id], normalizeBatch(data as Record<string, unknown>));
        refreshItems();
      },
      onFinal: () => {
        setStreamUp(false);
        refresh();
      },
      maxRetries: 3,
    });
    return () => {
      setStreamUp(false);
      close();
    };
  }, [id, !!batch.data, done, refresh]); // eslint-disable-line react-hooks/exhaustive-deps

  const cancel = useMutation({ mutationFn: () => cancelBatch(id), onSettled: refresh });

  if (batch.isPending) return <div className="page"><Spinner label="Loading batch" /></div>;
  if (batch.isError && !batch.data) {
    return (
      <div className="page">
        <ErrorState error={batch.error} what="batch" onRetry={() => void batch.refetch()} />
        <p>
          <Link to="/batches">Back to batches</Link>
        </p>
      </div>
    );
  }
  const b = batch.data!;
  const counts = b.counts ?? {};
  const sorted = failuresFirst(items.data ?? []);
  const pct = Math.round(b.progress * 100);

  return (
    <div className="page">
      <div className="page-head page-head-row">
        <div>
          <p className="crumbs">
            <Link to="/batches">Batches</Link> / <span className="mono">{b.id}</span>
          </p>
          <h1>
            Batch <span className="mono id-title">{shortId(b.id)}</span>{' '}
            <Badge tone={done ? 'ok' : 'info'}>{done ? 'finished' : 'running'}</Badge>
          </h1>
        </div>
        <div className="actions">
          {!done && (
            <button type="button" className="btn btn-danger" onClick={() => cancel.mutate()} disabled={cancel.isPending}>
              Cancel batch
            </button>
          )}
          <Link className="btn" to={`/evaluations?batch_id=${encodeURIComponent(b.id)}`}>
            Open in evaluations
          </Link>
        </div>
      </div>

      <section className="card" aria-label="Progress">
        <div className="progress-head">
          <span>
            <strong data-testid="batch-done">{b.done}</strong> of {b.count} finished
          </span>
          <span className="pass-rate">
            Pass rate <strong data-testid="pass-rate">{percent(b.pass_rate)}</strong>
          </span>
        </div>
        <div className="progress" role="progressbar" aria-label="Batch progress" aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
          <div className="progress-fill" style={{ width: `${pct}%` }} />
        </div>
        <p className="muted small">{pct}%</p>
      </section>

      <div className="counts-grid">
        <CountBars title="By status" counts={counts.status ?? {}} tones={{ completed: 'ok', error: 'bad', cancelled: 'muted' }} />
        <CountBars title="By verdict" counts={(counts.verdict ?? {}) as Record<string, number>} tones={{ passed: 'ok', failed: 'bad', none: 'muted' }} />
        <CountBars title="By termination" counts={counts.termination ?? {}} tones={TERM_TONES} />
      </div>

      <section aria-labelledby="items-h">
        <h2 id="items-h">Items (failures first)</h2>
        {items.isPending ? (
          <Spinner label="Loading items" />
        ) : items.isError ? (
          <ErrorState error={items.error} what="batch items" onRetry={() => void items.refetch()} />
        ) : sorted.length === 0 ? (
          <Empty title="No items found for this batch" />
        ) : (
          <>
            <div className="table-wrap">
              <table className="table" aria-label="Batch items">
                <thead>
                  <tr>
                    <th scope="col">ID</th>
                    <th scope="col">Status</th>
                    <th scope="col">Result</th>
                    <th scope="col">Verdict</th>
                    <th scope="col" className="hide-narrow">Language</th>
                    <th scope="col" className="hide-narrow">Labels</th>
                    <th scope="col" className="hide-narrow num">Wall</th>
                  </tr>
                </thead>
                <tbody>
                  {sorted.slice(0, shown).map((r) => {
                    const ex = explain(r);
                    return (
                      <tr key={r.id}>
                        <td>
                          <Link to={`/evaluations/${encodeURIComponent(r.id)}`} className="mono">
                            {shortId(r.id)}
                          </Link>
                        </td>
                        <td>
                          <StatusBadge status={r.status} />
                        </td>
                        <td>{r.result || r.status === 'error' ? <Badge tone={ex.tone}>{ex.label}</Badge> : <span className="muted">—</span>}</td>
                        <td>
                          {r.result?.verdict ? <Badge tone={r.result.verdict === 'passed' ? 'ok' : 'bad'}>{r.result.verdict}</Badge> : <span className="muted">—</span>}
                        </td>
                        <td className="hide-narrow">{r.request?.language}</td>
                        <td className="hide-narrow">
                          {Object.entries(r.request?.labels ?? {}).map(([k, v]) => (
                            <span className="chip" key={k}>
                              {k}: {v}
                            </span>
                          ))}
                        </td>
                        <td className="hide-narrow num">{formatMs(r.result?.wall_ms)}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
            {sorted.length > shown && (
              <button type="button" className="btn" onClick={() => setShown((s) => s + SHOW_STEP)}>
                Show {Math.min(SHOW_STEP, sorted.length - shown)} more of {sorted.length - shown}
              </button>
            )}
          </>
        )}
      </section>
    </div>
  );
}
