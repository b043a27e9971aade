import { useEffect, useReducer, useState, type FormEvent } from 'react';
import { Link, useParams } from 'react-router-dom';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { deleteSandbox, execInSandbox, getSandbox, listSandboxExecs, sandboxEventsUrl } from '../api/client';
import { subscribe } from '../api/sse';
import { Badge, ErrorState, Spinner } from '../components/ui';
import { formatBytes, formatMs, formatTime, shortDigest } from '../lib/format';
import { formatCommand, initialTranscript, orderedEntries, outcome, stopReason, transcriptReducer, type TranscriptEntry } from '../lib/transcript';
import { SandboxStatusBadge, sandboxAge } from './SandboxesPage';

/** The stored transcript, then the live stream on top (until `stopped`). */
function useTranscript(id: string, onChange: () => void) {
  const [state, dispatch] = useReducer(transcriptReducer, initialTranscript);
  useEffect(() => {
    dispatch({ type: 'reset' });
    const controller = new AbortController();
    let cursor: string | undefined;
    void (async () => {
      // Every page of the stored transcript (it outlives the sandbox).
      do {
        const page = await listSandboxExecs(id, cursor, controller.signal).catch(() => null);
        if (!page) return;
        dispatch({ type: 'load', execs: page.items });
        cursor = page.next_cursor ?? undefined;
      } while (cursor && !controller.signal.aborted);
    })();
    const close = subscribe(sandboxEventsUrl(id), {
      onEvent: (event, data, eventId) => {
        dispatch({ type: 'event', event, data, id: eventId });
        if (event === 'exec_finished' || event === 'stopped') onChange();
      },
      onFinal: onChange,
    });
    return () => {
      controller.abort();
      close();
    };
    // onChange is a refetch, stable enough: restarting the stream for it would replay.
  }, [id]);
  return state;
}

function Entry({ e }: { e: TranscriptEntry }) {
  const o = outcome(e);
  return (
    <li className="card transcript-entry" aria-label={`Command ${e.seq}`}>
      <div className="card-head">
        <code className="mono">
          <span className="muted">{e.user ? `${e.user}$ ` : '$ '}</span>
          {formatCommand(e.cmd)}
        </code>
        <span className="small">
          <Badge tone={o.tone}>{o.text}</Badge> <span className="muted">{e.durationMs !== null ? formatMs(e.durationMs) : ''}</span>
        </span>
      </div>
      {e.cwd && <p className="muted small">in {e.cwd}</p>}
      {e.stdout && (
        <pre className="output-text" role="log" aria-label={`stdout of command ${e.seq}`}>
          {e.stdout}
        </pre>
      )}
      {e.stderr && (
        <pre className="output-text output-stderr" role="log" aria-label={`stderr of command ${e.seq}`}>
          {e.stderr}
        </pre>
      )}
      {e.previewTruncated && <p className="output-note muted small">Output shortened here; the whole of it is in the API (…/execs/{e.seq}/output/stdout).</p>}
    </li>
  );
}

export function SandboxPage() {
  const { id = '' } = useParams();
  const queryClient = useQueryClient();
  const query = useQuery({
    queryKey: ['sandbox', id],
    queryFn: ({ signal }) => getSandbox(id, signal),
    refetchInterval: (q) => (q.state.data?.status === 'running' ? 5000 : false),
  });
  const refetch = () => void queryClient.invalidateQueries({ queryKey: ['sandbox', id] });
  const transcript = useTranscript(id, refetch);
  const [line, setLine] = useState('');
  const run = useMutation({
    mutationFn: (cmd: string) => execInSandbox(id, { cmd: ['bash', '-lc', cmd] }),
    onSuccess: () => setLine(''),
  });
  const stop = useMutation({ mutationFn: () => deleteSandbox(id), onSettled: refetch });

  if (query.isPending) return <Spinner label="Loading sandbox" />;
  if (query.isError && !query.data) return <ErrorState error={query.error} what="sandbox" onRetry={() => void query.refetch()} />;
  // The stream's final record is the freshest once it says stopped.
  const rec = transcript.stopped && transcript.record ? { ...query.data, ...transcript.record } : query.data;
  const running = rec.status === 'running';
  const entries = orderedEntries(transcript);

  function submit(ev: FormEvent) {
    ev.preventDefault();
    if (line.trim()) run.mutate(line);
  }

  return (
    <div className="page">
      <div className="page-head page-head-row">
        <div>
          <p className="muted small">
            <Link to="/sandboxes">Sandboxes</Link> /
          </p>
          <h1 className="mono">{rec.id}</h1>
        </div>
        <div className="page-actions">
          <SandboxStatusBadge record={rec} />
          {running && (
            <button type="button" className="btn btn-danger" onClick={() => stop.mutate()} disabled={stop.isPending}>
              {stop.isPending ? 'Stopping…' : 'Stop'}
            </button>
          )}
        </div>
      </div>
      {!running && (
        <div className="alert alert-warn" role="status">
          This sandbox is {rec.status}
          {rec.stop_reason ? `: ${stopReason(rec.stop_reason)}` : ''}. Its transcript stays.
        </div>
      )}
      <section className="card" aria-labelledby="sbx-h">
        <h2 id="sbx-h">Sandbox</h2>
        <dl className="kv">
          <dt>Runtime</dt>
          <dd>{rec.runtime}</dd>
          <dt>Host</dt>
          <dd className="mono" title="The process hosting it: a worker of the Dashboard">
            {rec.worker_id ?? '—'}
          </dd>
          <dt>Environment</dt>
          <dd>
            {rec.environment}
            {rec.environment_digest && <span className="mono muted small"> {shortDigest(rec.environment_digest)}</span>}
          </dd>
          <dt>Owner</dt>
          <dd className="mono">{rec.owner_key_id ?? '—'}</dd>
          <dt>Age</dt>
          <dd>{sandboxAge(rec)}</dd>
          <dt>Expires</dt>
          <dd>{running ? formatTime(rec.expires_at) : '—'}</dd>
          <dt>Limits</dt>
          <dd>
            {rec.limits.memory_mb} MB · {rec.limits.cpus} CPU · {rec.limits.pids} pids · {rec.limits.disk_mb} MB disk
          </dd>
          <dt>Used</dt>
          <dd>
            {rec.resources.exec_count} commands · {rec.resources.cpu_ms} ms CPU · peak {formatBytes(rec.resources.peak_memory_bytes)}
          </dd>
          <dt>Idle timeout</dt>
          <dd>{rec.idle_timeout_s} s</dd>
        </dl>
      </section>

      <section aria-labelledby="tr-h">
        <h2 id="tr-h">Transcript</h2>
        {entries.length === 0 ? (
          <p className="muted">No commands yet.</p>
        ) : (
          <ol className="transcript" aria-label="Transcript">
            {entries.map((e) => (
              <Entry key={e.seq} e={e} />
            ))}
          </ol>
        )}
      </section>

      {running && (
        <form className="card run-command" onSubmit={submit} aria-label="Run a command">
          <label htmlFor="sbx-cmd">Run a command (bash -lc)</label>
          <div className="filters">
            <input
              id="sbx-cmd"
              className="mono"
              value={line}
              onChange={(e) => setLine(e.target.value)}
              placeholder="ls -la /workspace"
              autoComplete="off"
              spellCheck={false}
            />
            <button type="submit" className="btn btn-primary" disabled={run.isPending || !line.trim()}>
              {run.isPending ? 'Running…' : 'Run'}
            </button>
          </div>
          {run.isError && (
            <div className="alert alert-bad" role="alert">
              {run.error instanceof Error ? run.error.message : String(run.error)}
            </div>
          )}
        </form>
      )}
    </div>
  );
}
