import { useRef, useState } from 'react';
import { Link, useNavigate, useParams } from 'react-router-dom';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import {
  ApiError,
  cancelEvaluation,
  evaluationEventsUrl,
  fileUrl,
  openWithKey,
  getEvaluation,
  getFullOutput,
  outputUrl,
  submitEvaluation,
} from '../api/client';
import type { EvaluationRecord, Limits, RunResult } from '../api/models';
import { CodeEditor } from '../components/CodeEditor';
import { Flags } from '../components/Flags';
import { OutputPane } from '../components/OutputPane';
import { Badge, CopyButton, ErrorState, Spinner, StatusBadge, UsageBar } from '../components/ui';
import { asCli, asCurl, resubmittable } from '../lib/commands';
import { durationBetween, formatBytes, formatMs, formatSeconds, formatTime, formatClock, shortId } from '../lib/format';
import { useLiveEvents } from '../hooks';
import { exitCodeMeaning, explain, kernelEventNotes, signalMeaning, verdictExplanation } from '../lib/verdict';

const ACTIVE = new Set(['queued', 'running']);
const FALLBACK_POLL_MS = 10_000;
const MiB = 1024 * 1024;

function Timeline({ rec }: { rec: EvaluationRecord }) {
  const wait = rec.queue_wait_ms ?? durationBetween(rec.created_at, rec.started_at);
  const run = durationBetween(rec.started_at, rec.finished_at);
  const finishedLabel = rec.status === 'cancelled' ? 'Cancelled' : rec.status === 'error' ? 'Failed' : 'Finished';
  const steps = [
    { key: 'queued', label: 'Queued', at: rec.created_at, note: wait !== null && rec.started_at ? `waited ${formatMs(wait)}` : rec.status === 'queued' ? 'waiting…' : null, done: true },
    { key: 'started', label: 'Started', at: rec.started_at, note: run !== null ? `ran ${formatMs(run)}` : rec.status === 'running' ? 'running…' : null, done: !!rec.started_at },
    { key: 'finished', label: finishedLabel, at: rec.finished_at, note: rec.attempts > 1 ? `after ${rec.attempts} attempts` : null, done: !!rec.finished_at },
  ];
  return (
    <ol className="timeline" aria-label="Timeline">
      {steps.map((s) => (
        <li key={s.key} className={`timeline-step ${s.done ? 'done' : ''} ${!s.done && ACTIVE.has(rec.status) ? 'pending' : ''}`}>
          <span className="timeline-dot" aria-hidden="true" />
          <span className="timeline-label">{s.label}</span>
          <span className="timeline-at">
            {s.at ? (
              <time dateTime={s.at} title={formatTime(s.at)}>
                {formatClock(s.at)}
              </time>
            ) : (
              '—'
            )}
          </span>
          {s.note && <span className="timeline-note">{s.note}</span>}
        </li>
      ))}
    </ol>
  );
}

function Resources({ r }: { r: RunResult }) {
  const l = r.limits;
  const outBytes = new Blob([r.stdout]).size + new Blob([r.stderr]).size;
  return (
    <div className="usage-list">
      <UsageBar label="Wall time" value={r.wall_ms} max={l.timeout_s * 1000} text={`${formatMs(r.wall_ms)} of ${formatSeconds(l.timeout_s)}`} />
      <UsageBar label="CPU time" value={r.cpu_ms} max={l.cpu_s * 1000} text={`${formatMs(r.cpu_ms)} of ${formatSeconds(l.cpu_s)}`} />
      <UsageBar
        label="Peak memory"
        value={r.peak_memory_bytes}
        max={l.memory_mb * MiB}
        text={`${formatBytes(r.peak_memory_bytes)} of ${l.memory_mb} MB`}
      />
      <UsageBar label="Output" value={outBytes} max={l.output_bytes} text={`${formatBytes(outBytes)} of ${formatBytes(l.output_bytes)}`} />
    </div>
  );
}

function LimitsTable({ limits }: { limits: Partial<Limits> | undefined }) {
  if (!limits || Object.keys(limits).length === 0) return <span className="muted">server defaults</span>;
  const fmt: Record<string, (v: number) => string> = {
    timeout_s: (v) => `${formatSeconds(v)} wall`,
    cpu_s: (v) => `${formatSeconds(v)} CPU`,
    memory_mb: (v) => `${v} MB memory`,
    cpus: (v) => `${v} CPU${v === 1 ? '' : 's'}`,
    pids: (v) => `${v} processes`,
    output_bytes: (v) => `${formatBytes(v)} output`,
    disk_mb: (v) => `${v} MB disk`,
  };
  return (
    <span>
      {Object.entries(limits)
        .filter(([, v]) => typeof v === 'number')
        .map(([k, v]) => (fmt[k] ? fmt[k](v as number) : `${k}=${v}`))
        .join(' · ')}
    </span>
  );
}

// Why the workspace listing left entries out (Result.files_omitted).
const OMITTED: Record<string, string> = {
  entries: 'past the count limit',
  deep: 'directories too deep',
  special: 'links, FIFOs or sockets',
  unreadable: 'unreadable',
  time: 'when the listing ran out of time',
};

export function EvaluationPage() {
  const { id = '' } = useParams();
  const navigate = useNavigate();
  const qc = useQueryClient();
  const [actionError, setActionError] = useState<string | null>(null);
  const [full, setFull] = useState<{ stdout?: string; stderr?: string }>({});
  const [loadingFull, setLoadingFull] = useState<string | null>(null);

  // While the event stream is connected it carries the status and output, and its
  // final event re-reads the record: the slow poll is only the stream's fallback.
  const streamUp = useRef(false);
  const query = useQuery({
    queryKey: ['evaluation', id],
    queryFn: ({ signal }) => getEvaluation(id, signal),
    refetchInterval: (q) =>
      q.state.data && ACTIVE.has(q.state.data.status) ? (streamUp.current ? false : FALLBACK_POLL_MS) : q.state.error ? 5000 : false,
  });
  const rec = query.data;
  const active = !!rec && ACTIVE.has(rec.status);
  const live = useLiveEvents(rec ? evaluationEventsUrl(id) : null, active, () => {
    void qc.invalidateQueries({ queryKey: ['evaluation', id] });
  });
  streamUp.current = live.connected;

  const cancel = useMutation({
    mutationFn: () => cancelEvaluation(id),
    onSuccess: () => {
      setActionError(null);
      void qc.invalidateQueries({ queryKey: ['evaluation', id] });
    },
    onError: (err) => {
      setActionError(err instanceof ApiError && err.status === 409 ? 'It had already finished.' : `Cancel failed: ${(err as Error).message}`);
      void qc.invalidateQueries({ queryKey: ['evaluation', id] });
    },
  });

  const again = useMutation({
    mutationFn: () => submitEvaluation(resubmittable(rec!.request)),
    onSuccess: (r) => {
      qc.setQueryData(['evaluation', r.id], r);
      navigate(`/evaluations/${encodeURIComponent(r.id)}`);
    },
    onError: (err) => setActionError(`Run again failed: ${(err as Error).message}`),
  });

  if (query.isPending) return <div className="page"><Spinner label="Loading evaluation" /></div>;
  if (query.isError && !rec) {
    return (
      <div className="page">
        <ErrorState error={query.error} what="evaluation" onRetry={() => void query.refetch()} />
        <p>
          <Link to="/evaluations">Back to evaluations</Link>
        </p>
      </div>
    );
  }
  if (!rec) return null;

  // The live status may run ahead of the record between polls.
  const status = active && live.status && ACTIVE.has(rec.status) ? live.status : rec.status;
  const isActive = ACTIVE.has(status);
  const r = rec.result;
  const ex = explain({ ...rec, status });
  const verdict = verdictExplanation(r, !!rec.request?.test_code);
  const pick = (stream: 'stdout' | 'stderr') => {
    if (full[stream] !== undefined) return full[stream]!;
    const saved = r?.[stream] ?? '';
    return live[stream].length > saved.length ? live[stream] : saved;
  };
  const origin = typeof window !== 'undefined' ? window.location.origin : '';
  const request = rec.request ?? ({ language: 'python', code: '' } as EvaluationRecord['request']);
  const notes = r ? kernelEventNotes(r) : [];

  async function loadFull(stream: 'stdout' | 'stderr') {
    setLoadingFull(stream);
    try {
      const text = await getFullOutput(id, stream);
      setFull((f) => ({ ...f, [stream]: text }));
    } catch (err) {
      setActionError((err as Error).message);
    } finally {
      setLoadingFull(null);
    }
  }

  return (
    <div className="page evaluation-page">
      <div className="page-head page-head-row">
        <div>
          <p className="crumbs">
            <Link to="/evaluations">Evaluations</Link> / <span className="mono">{rec.id}</span>
          </p>
          <h1>
            Evaluation <span className="mono id-title">{shortId(rec.id)}</span> <StatusBadge status={status} />
          </h1>
          <p className="muted small">
            {request?.language} · {request?.runtime ?? 'crun'} ·{' '}
            <span title={request?.environment_digest ?? 'the host toolchain'}>environment {request?.environment ?? 'host'}</span> · priority{' '}
            {request?.priority ?? 'normal'}
            {rec.batch_id && (
              <>
                {' '}
                · batch <Link to={`/batches/${encodeURIComponent(rec.batch_id)}`}>{shortId(rec.batch_id)}</Link>
              </>
            )}
          </p>
        </div>
        <div className="actions">
          {isActive && (
            <button type="button" className="btn btn-danger" onClick={() => cancel.mutate()} disabled={cancel.isPending}>
              {cancel.isPending ? 'Cancelling…' : 'Cancel'}
            </button>
          )}
          <button type="button" className="btn" onClick={() => navigate('/', { state: { request } })}>
            Re-run with edits
          </button>
          <button type="button" className="btn" onClick={() => again.mutate()} disabled={again.isPending}>
            Run again
          </button>
        </div>
      </div>
      {actionError && (
        <div className="alert alert-warn" role="alert">
          {actionError}
        </div>
      )}
      {query.isError && (
        <div className="alert alert-warn" role="status">
          Lost contact with the server; showing the last known state.
        </div>
      )}

      <section className={`verdict verdict-${ex.tone}`} aria-label="Verdict" data-testid="verdict">
        <div className="verdict-badges">
          <Badge tone={ex.tone}>{ex.label}</Badge>
          {verdict && <Badge tone={verdict.tone}>{verdict.label}</Badge>}
        </div>
        <div>
          <p className="verdict-title">{ex.title}</p>
          {ex.detail && <p className="verdict-detail">{ex.detail}</p>}
          {verdict && <p className="verdict-detail">{verdict.title}</p>}
          {rec.status === 'error' && rec.error && <p className="verdict-detail mono">{rec.error}</p>}
        </div>
      </section>

      <div className="eval-grid">
        <section className="card" aria-labelledby="timeline-h">
          <h2 id="timeline-h">Timeline</h2>
          <Timeline rec={{ ...rec, status }} />
        </section>

        {r && (
          <section className="card" aria-labelledby="exit-h">
            <h2 id="exit-h">Exit</h2>
            <dl className="kv">
              <dt>Exit code</dt>
              <dd>
                {r.exit_code === null ? <span className="muted">none</span> : <span className="mono">{r.exit_code}</span>}
                {r.exit_code !== null && <span className="muted"> — {exitCodeMeaning(r.exit_code)}</span>}
              </dd>
              <dt>Signal</dt>
              <dd>
                {r.signal ? <span className="mono">{r.signal}</span> : <span className="muted">none</span>}
                {r.signal && <span className="muted"> — {signalMeaning(r.signal)}</span>}
              </dd>
              <dt>Termination</dt>
              <dd className="mono">{r.termination}</dd>
              <dt>Runtime</dt>
              <dd>
                {r.runtime?.name} <span className="muted">{r.runtime?.version}</span>
              </dd>
            </dl>
          </section>
        )}

        {r && (
          <section className="card" aria-labelledby="res-h">
            <h2 id="res-h">Resources used</h2>
            <Resources r={r} />
          </section>
        )}

        {r && (
          <section className="card" aria-labelledby="kernel-h">
            <h2 id="kernel-h">Kernel events</h2>
            <dl className="kv">
              <dt>OOM kills</dt>
              <dd className={r.events?.oom_kill ? 'text-bad' : ''}>{r.events?.oom_kill ?? 0}</dd>
              <dt>Pids-limit hits</dt>
              <dd className={r.events?.pids_limit ? 'text-bad' : ''}>{r.events?.pids_limit ?? 0}</dd>
            </dl>
            {notes.length > 0 ? (
              <ul className="notes">
                {notes.map((n) => (
                  <li key={n}>{n}</li>
                ))}
              </ul>
            ) : (
              <p className="muted small">The kernel reported no out-of-memory kills and no refused forks.</p>
            )}
          </section>
        )}
      </div>

      <div className="outputs">
        <OutputPane
          id="stdout"
          title="stdout"
          text={pick('stdout')}
          live={isActive}
          truncated={r?.stdout_truncated}
          fullUrl={r ? outputUrl(id, 'stdout') : undefined}
          onLoadFull={r?.stdout_inline_truncated && full.stdout === undefined ? () => void loadFull('stdout') : undefined}
          loadingFull={loadingFull === 'stdout'}
        />
        <OutputPane
          id="stderr"
          title="stderr"
          text={pick('stderr')}
          live={isActive}
          truncated={r?.stderr_truncated}
          fullUrl={r ? outputUrl(id, 'stderr') : undefined}
          onLoadFull={r?.stderr_inline_truncated && full.stderr === undefined ? () => void loadFull('stderr') : undefined}
          loadingFull={loadingFull === 'stderr'}
        />
      </div>

      {r && (
        <section className="card" aria-labelledby="files-h">
          <h2 id="files-h">Files produced</h2>
          {r.files.length === 0 ? (
            <p className="muted small">The program left no files in /workspace.</p>
          ) : (
            <ul className="files">
              {r.files.map((f) => (
                <li key={f.path}>
                  <a
                    href={fileUrl(id, f.path)}
                    download={f.path.split('/').pop()}
                    onClick={(e) => {
                      // A plain link cannot send the API key: fetch it, then save the blob.
                      e.preventDefault();
                      void openWithKey(fileUrl(id, f.path), f.path.split('/').pop());
                    }}
                  >
                    {f.path}
                  </a>{' '}
                  <span className="muted small">{formatBytes(f.size)}</span>
                </li>
              ))}
            </ul>
          )}
          {Object.keys(r.files_omitted ?? {}).length > 0 && (
            <p className="muted small" data-testid="files-omitted">
              Not listed:{' '}
              {Object.entries(r.files_omitted ?? {})
                .map(([why, n]) => `${n} ${OMITTED[why] ?? why}`)
                .join(', ')}
              .
            </p>
          )}
        </section>
      )}

      <section className="card" aria-labelledby="code-h">
        <div className="card-head">
          <h2 id="code-h">Submitted program</h2>
          <div className="actions">
            <CopyButton className="btn btn-small" text={asCurl(request, origin)} label="Copy as curl" />
            <CopyButton className="btn btn-small" text={asCli(request)} label="Copy as CLI" />
          </div>
        </div>
        <dl className="kv kv-wide">
          <dt>Scan flags</dt>
          <dd data-testid="scan-flags">
            <Flags flags={query.data?.flags} />{' '}
            <span className="muted small">static signals from the code; informational, never blocking</span>
          </dd>
          <dt>Limits</dt>
          <dd>
            <LimitsTable limits={r?.limits ?? request?.limits} />
          </dd>
          {request?.labels && Object.keys(request.labels).length > 0 && (
            <>
              <dt>Labels</dt>
              <dd>
                {Object.entries(request.labels).map(([k, v]) => (
                  <span key={k} className="chip">
                    {k}: {v}
                  </span>
                ))}
              </dd>
            </>
          )}
          {request?.args && request.args.length > 0 && (
            <>
              <dt>Arguments</dt>
              <dd className="mono">{request.args.join(' ')}</dd>
            </>
          )}
          {request?.stdin && (
            <>
              <dt>Stdin</dt>
              <dd>
                <pre className="inline-pre">{request.stdin}</pre>
              </dd>
            </>
          )}
          {request?.expected_output != null && (
            <>
              <dt>Expected output</dt>
              <dd>
                <pre className="inline-pre">{request.expected_output}</pre>
              </dd>
            </>
          )}
        </dl>
        {request?.files && Object.keys(request.files).length > 0 ? (
          Object.entries(request.files).map(([path, content]) => (
            <div key={path} className="submitted-file">
              <p className="mono small">
                {path}
                {path === request.entrypoint ? ' (entrypoint)' : ''}
              </p>
              <CodeEditor value={content} language={request.language} readOnly ariaLabel={`Submitted file ${path}`} minHeight="4rem" maxHeight="24rem" />
            </div>
          ))
        ) : (
          <CodeEditor value={request?.code ?? ''} language={request?.language ?? 'python'} readOnly ariaLabel="Submitted code" minHeight="4rem" maxHeight="24rem" />
        )}
        {request?.test_code && (
          <>
            <p className="small muted">Test code</p>
            <CodeEditor value={request.test_code} language={request.language} readOnly ariaLabel="Submitted test code" minHeight="3rem" maxHeight="16rem" />
          </>
        )}
        <details className="commands">
          <summary>Show commands</summary>
          <p className="small muted">curl</p>
          <pre className="inline-pre">{asCurl(request, origin)}</pre>
          <p className="small muted">CLI</p>
          <pre className="inline-pre">{asCli(request)}</pre>
        </details>
      </section>
    </div>
  );
}
