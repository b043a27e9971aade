import { useState } from 'react';
import { Link, useNavigate } from 'react-router-dom';
import { keepPreviousData, useMutation, useQuery } from '@tanstack/react-query';
import { createSandbox, listSandboxes } from '../api/client';
import type { SandboxRecord } from '../api/models';
import { Badge, Empty, ErrorState, Spinner } from '../components/ui';
import { EnvironmentSelect } from '../components/EnvironmentSelect';
import { formatBytes, formatTime, hostLabel, relativeTime, shortId } from '../lib/format';
import { stopReason } from '../lib/transcript';
import type { Tone } from '../lib/verdict';

const STATUS_TONE: Record<string, Tone> = { running: 'info', stopped: 'muted', lost: 'warn' };

export function SandboxStatusBadge({ record }: { record: Pick<SandboxRecord, 'status' | 'stop_reason'> }) {
  return (
    <Badge tone={STATUS_TONE[record.status] ?? 'muted'} title={stopReason(record.stop_reason) || undefined}>
      {record.status === 'running' && <span className="dot dot-running" aria-hidden="true" />}
      {record.status}
      {record.stop_reason && record.stop_reason !== 'lost' ? ` · ${record.stop_reason}` : ''}
    </Badge>
  );
}

/** How long it has lived (to now, or to when it stopped). */
export function sandboxAge(r: Pick<SandboxRecord, 'created_at' | 'stopped_at'>, now = Date.now()): string {
  const end = r.stopped_at ? Date.parse(r.stopped_at) : now;
  const s = Math.max(0, Math.round((end - Date.parse(r.created_at)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function Row({ rec }: { rec: SandboxRecord }) {
  return (
    <tr>
      <td>
        <Link to={`/sandboxes/${encodeURIComponent(rec.id)}`} className="mono" aria-label={`Sandbox ${rec.id}`}>
          {shortId(rec.id)}
        </Link>
      </td>
      <td>
        <SandboxStatusBadge record={rec} />
      </td>
      <td className="mono small">{rec.owner_key_id ?? '—'}</td>
      <td>{rec.runtime}</td>
      <td className="mono small" title={rec.worker_id ?? undefined}>
        {hostLabel(rec.worker_id)}
      </td>
      <td className="mono small" title={rec.environment_digest ?? undefined}>
        {rec.environment}
      </td>
      <td className="num">{sandboxAge(rec)}</td>
      <td className="num">{rec.resources.exec_count}</td>
      <td className="num hide-narrow">{rec.resources.cpu_ms} ms</td>
      <td className="num hide-narrow">{formatBytes(rec.resources.peak_memory_bytes)}</td>
      <td className="hide-narrow">
        <time dateTime={rec.created_at} title={formatTime(rec.created_at)}>
          {relativeTime(rec.created_at)}
        </time>
      </td>
    </tr>
  );
}

export function SandboxesPage() {
  const navigate = useNavigate();
  const [status, setStatus] = useState('');
  const [environment, setEnvironment] = useState('host');
  const query = useQuery({
    queryKey: ['sandboxes', status],
    queryFn: ({ signal }) => listSandboxes({ status: status || undefined, limit: 100 }, signal),
    placeholderData: keepPreviousData,
    refetchInterval: 2000, // live status: sandboxes stop on their own (ttl, idle)
  });
  const create = useMutation({
    mutationFn: () => createSandbox(environment === 'host' ? {} : { environment }),
    onSuccess: (rec) => navigate(`/sandboxes/${encodeURIComponent(rec.id)}`),
  });
  const items = query.data?.items ?? [];

  return (
    <div className="page">
      <div className="page-head page-head-row">
        <h1>Sandboxes</h1>
        <div className="actions new-sandbox">
          <div className="field field-compact">
            <label htmlFor="new-sbx-env">Environment</label>
            <EnvironmentSelect id="new-sbx-env" value={environment} onChange={setEnvironment} />
          </div>
          <button type="button" className="btn btn-primary" onClick={() => create.mutate()} disabled={create.isPending}>
            {create.isPending ? 'Creating…' : 'New sandbox'}
          </button>
        </div>
      </div>
      <p className="muted">Long-lived sandboxes an agent drives one command at a time; each keeps a transcript of every command.</p>
      {create.isError && (
        <div className="alert alert-bad" role="alert">
          Could not create a sandbox: {create.error instanceof Error ? create.error.message : String(create.error)}
        </div>
      )}
      <div className="filters" role="group" aria-label="Filters">
        <div className="field field-compact">
          <label htmlFor="f-sbx-status">Status</label>
          <select id="f-sbx-status" value={status} onChange={(e) => setStatus(e.target.value)}>
            <option value="">any</option>
            <option value="running">running</option>
            <option value="stopped">stopped</option>
            <option value="lost">lost</option>
          </select>
        </div>
      </div>
      {query.isPending ? (
        <Spinner label="Loading sandboxes" />
      ) : query.isError && !query.data ? (
        <ErrorState error={query.error} what="sandboxes" onRetry={() => void query.refetch()} />
      ) : items.length === 0 ? (
        <Empty title={status ? `No ${status} sandboxes` : 'No sandboxes yet'}>Create one here, or with `crucible sandbox create`.</Empty>
      ) : (
        <div className="table-wrap">
          <table className="table" aria-label="Sandboxes" aria-busy={query.isFetching}>
            <thead>
              <tr>
                <th scope="col">ID</th>
                <th scope="col">Status</th>
                <th scope="col">Owner</th>
                <th scope="col">Runtime</th>
                <th scope="col" title="The process hosting it (a worker of the Dashboard)">
                  Host
                </th>
                <th scope="col">Environment</th>
                <th scope="col" className="num">
                  Age
                </th>
                <th scope="col" className="num">
                  Commands
                </th>
                <th scope="col" className="num hide-narrow">
                  CPU
                </th>
                <th scope="col" className="num hide-narrow">
                  Peak memory
                </th>
                <th scope="col" className="hide-narrow">
                  Created
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
      )}
    </div>
  );
}
