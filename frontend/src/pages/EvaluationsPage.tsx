import { useEffect, useState, type FormEvent } from 'react';
import { Link, useSearchParams } from 'react-router-dom';
import { keepPreviousData, useQuery, useQueryClient } from '@tanstack/react-query';
import { batchEventsUrl, listEvaluations, type EvaluationFilters } from '../api/client';
import { subscribe } from '../api/sse';
import { useThrottled } from '../hooks';
import { LANGUAGES, STATUSES, TERMINATIONS, VERDICTS, type EvaluationRecord } from '../api/models';
import { SCAN_FLAGS } from '../api/types';
import { Flags } from '../components/Flags';
import { Badge, Empty, ErrorState, Spinner, StatusBadge } from '../components/ui';
import { formatMs, relativeTime, formatTime, shortId } from '../lib/format';
import { explain } from '../lib/verdict';

const FILTER_KEYS = ['status', 'language', 'verdict', 'termination', 'flag', 'label', 'batch_id'] as const;
const PAGE_SIZE = 50;
const ACTIVE = new Set(['queued', 'running']);
const ACTIVE_POLL_MS = 5000;
const REST_POLL_MS = 30_000;

function Row({ rec }: { rec: EvaluationRecord }) {
  const ex = explain(rec);
  const verdict = rec.result?.verdict;
  return (
    <tr>
      <td>
        <Link to={`/evaluations/${encodeURIComponent(rec.id)}`} className="mono" aria-label={`Evaluation ${rec.id}`}>
          {shortId(rec.id)}
        </Link>
      </td>
      <td>
        <StatusBadge status={rec.status} />
      </td>
      <td>
        {rec.result || rec.status === 'error' ? <Badge tone={ex.tone}>{ex.label}</Badge> : <span className="muted">—</span>}
      </td>
      <td>{verdict ? <Badge tone={verdict === 'passed' ? 'ok' : 'bad'}>{verdict}</Badge> : <span className="muted">—</span>}</td>
      <td>{rec.request?.language ?? '—'}</td>
      <td>
        <Flags flags={rec.flags} />
      </td>
      <td className="hide-narrow">
        {Object.entries(rec.request?.labels ?? {}).map(([k, v]) => (
          <span key={k} className="chip">
            {k}: {v}
          </span>
        ))}
      </td>
      <td className="hide-narrow num">{formatMs(rec.result?.wall_ms)}</td>
      <td className="hide-narrow">
        <time dateTime={rec.created_at} title={formatTime(rec.created_at)}>
          {relativeTime(rec.created_at)}
        </time>
      </td>
      <td className="hide-narrow">
        {rec.batch_id ? (
          <Link to={`/batches/${encodeURIComponent(rec.batch_id)}`} className="mono">
            {shortId(rec.batch_id)}
          </Link>
        ) : (
          <span className="muted">—</span>
        )}
      </td>
    </tr>
  );
}

export function EvaluationsPage() {
  const [params, setParams] = useSearchParams();
  const filters: EvaluationFilters = {};
  for (const k of FILTER_KEYS) {
    const v = params.get(k);
    if (v) filters[k] = v;
  }
  const filterKey = JSON.stringify(filters);
  // Cursor pagination: a stack of cursors for the pages seen so far.
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  useEffect(() => setCursors([undefined]), [filterKey]);
  const cursor = cursors[cursors.length - 1];
  const [label, setLabel] = useState(filters.label ?? '');
  const [batch, setBatch] = useState(filters.batch_id ?? '');
  useEffect(() => {
    setLabel(filters.label ?? '');
    setBatch(filters.batch_id ?? '');
  }, [filters.label, filters.batch_id]);

  // A batch's page follows the batch's event stream (one connection, an event as each
  // item finishes). Without a batch there is no list-wide stream, and one per row would
  // exhaust the browser's connections: a slow poll while any row is active (a page
  // is one index range scan, see README "Cheap reads"), slower at rest.
  const qc = useQueryClient();
  const [streamUp, setStreamUp] = useState(false);
  const query = useQuery({
    queryKey: ['evaluations', filters, cursor ?? null],
    queryFn: ({ signal }) => listEvaluations({ ...filters, cursor, limit: PAGE_SIZE }, signal),
    placeholderData: keepPreviousData,
    refetchInterval: (q) =>
      q.state.error ? 5000 : q.state.data?.items.some((r) => ACTIVE.has(r.status)) ? (streamUp ? false : ACTIVE_POLL_MS) : REST_POLL_MS,
  });
  const anyActive = !!query.data?.items.some((r) => ACTIVE.has(r.status));
  const refresh = useThrottled(() => void qc.invalidateQueries({ queryKey: ['evaluations'] }), 1000);
  useEffect(() => {
    if (!filters.batch_id || !anyActive) return;
    const close = subscribe(batchEventsUrl(filters.batch_id), {
      onOpen: () => setStreamUp(true),
      onError: () => setStreamUp(false),
      onEvent: refresh,
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
  }, [filters.batch_id, anyActive, refresh]);

  function setFilter(key: (typeof FILTER_KEYS)[number], value: string) {
    const next = new URLSearchParams(params);
    if (value) next.set(key, value);
    else next.delete(key);
    setParams(next, { replace: true });
  }

  function applyText(e: FormEvent) {
    e.preventDefault();
    const next = new URLSearchParams(params);
    for (const [k, v] of [
      ['label', label.trim()],
      ['batch_id', batch.trim()],
    ] as const) {
      if (v) next.set(k, v);
      else next.delete(k);
    }
    setParams(next, { replace: true });
  }

  const anyFilter = Object.keys(filters).length > 0;
  const items = query.data?.items ?? [];

  const select = (key: 'status' | 'language' | 'verdict' | 'termination' | 'flag', label: string, options: readonly string[]) => (
    <div className="field field-compact">
      <label htmlFor={`f-${key}`}>{label}</label>
      <select id={`f-${key}`} value={filters[key] ?? ''} onChange={(e) => setFilter(key, e.target.value)}>
        <option value="">Any</option>
        {options.map((o) => (
          <option key={o} value={o}>
            {o.replace('_', ' ')}
          </option>
        ))}
      </select>
    </div>
  );

  return (
    <div className="page">
      <div className="page-head page-head-row">
        <h1>Evaluations</h1>
        <Link to="/" className="btn btn-primary">
          New run
        </Link>
      </div>
      <form className="filters" onSubmit={applyText} aria-label="Filters">
        {select('status', 'Status', STATUSES)}
        {select('termination', 'Termination', TERMINATIONS)}
        {select('verdict', 'Verdict', VERDICTS)}
        {select('language', 'Language', LANGUAGES)}
        {select('flag', 'Flag', SCAN_FLAGS)}
        <div className="field field-compact">
          <label htmlFor="f-label">Label</label>
          <input id="f-label" placeholder="key:value" value={label} onChange={(e) => setLabel(e.target.value)} />
        </div>
        <div className="field field-compact">
          <label htmlFor="f-batch">Batch</label>
          <input id="f-batch" placeholder="batch id" value={batch} onChange={(e) => setBatch(e.target.value)} />
        </div>
        <div className="filter-buttons">
          <button type="submit" className="btn">
            Apply
          </button>
          {anyFilter && (
            <button type="button" className="btn btn-ghost" onClick={() => setParams(new URLSearchParams(), { replace: true })}>
              Clear
            </button>
          )}
        </div>
      </form>

      {query.isPending ? (
        <Spinner label="Loading evaluations" />
      ) : query.isError && !query.data ? (
        <ErrorState error={query.error} what="evaluations" onRetry={() => void query.refetch()} />
      ) : items.length === 0 ? (
        <Empty title={anyFilter ? 'No evaluations match these filters' : 'No evaluations yet'}>
          {anyFilter ? 'Try removing a filter.' : <Link to="/">Run your first program.</Link>}
        </Empty>
      ) : (
        <>
          {query.isError && (
            <div className="alert alert-warn" role="status">
              Lost contact with the server; showing the last known list.
            </div>
          )}
          <div className="table-wrap">
            <table className="table" aria-label="Evaluations" aria-busy={query.isFetching}>
              <thead>
                <tr>
                  <th scope="col">ID</th>
                  <th scope="col">Status</th>
                  <th scope="col">Result</th>
                  <th scope="col">Verdict</th>
                  <th scope="col">Language</th>
                  <th scope="col">Flags</th>
                  <th scope="col" className="hide-narrow">
                    Labels
                  </th>
                  <th scope="col" className="hide-narrow num">
                    Wall
                  </th>
                  <th scope="col" className="hide-narrow">
                    Created
                  </th>
                  <th scope="col" className="hide-narrow">
                    Batch
                  </th>
                </tr>
              </thead>
              <tbody>
                {items.map((r) => (
                  <Row key={r.id} rec={r} />
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      <nav className="pager" aria-label="Pages">
        <button type="button" className="btn" disabled={cursors.length <= 1} onClick={() => setCursors((c) => c.slice(0, -1))}>
          ← Newer
        </button>
        <span className="muted small">Page {cursors.length}</span>
        <button
          type="button"
          className="btn"
          disabled={!query.data?.next_cursor}
          onClick={() => query.data?.next_cursor && setCursors((c) => [...c, query.data!.next_cursor!])}
        >
          Older →
        </button>
      </nav>
    </div>
  );
}
