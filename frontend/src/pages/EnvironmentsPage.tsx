import { Empty, ErrorState, Spinner } from '../components/ui';
import { useEnvironments } from '../components/EnvironmentSelect';
import { formatBytes, formatTime, relativeTime, shortDigest } from '../lib/format';

/** The root file systems evaluations and sandboxes can run in (`environment`). */
export function EnvironmentsPage() {
  const query = useEnvironments();
  const items = query.data ?? [];
  return (
    <div className="page">
      <div className="page-head">
        <h1>Environments</h1>
      </div>
      <p className="muted">
        Read-only root file systems a run or a sandbox can name instead of <span className="mono">host</span>, the server's own toolchain.
        Admins add them with <span className="mono">crucible env pull</span> (from a registry), <span className="mono">crucible env import</span> or{' '}
        <span className="mono">POST /api/v1/environments</span> (<span className="mono">/pull</span>).
      </p>
      {query.isPending ? (
        <Spinner label="Loading environments" />
      ) : query.isError ? (
        <ErrorState error={query.error} what="environments" onRetry={() => void query.refetch()} />
      ) : items.length === 0 ? (
        <Empty title="No environments yet">
          Pull one: <span className="mono">crucible env pull python:3.12-slim</span>, or import one:{' '}
          <span className="mono">docker save python:3.12-slim | crucible env import - --name python:3.12-slim</span>
        </Empty>
      ) : (
        <div className="table-wrap">
          <table className="table" aria-label="Environments">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Digest</th>
                <th scope="col" className="num">
                  Size
                </th>
                <th scope="col">Languages</th>
                <th scope="col" className="hide-narrow">
                  Source
                </th>
                <th scope="col" className="hide-narrow">
                  Created
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((e) => (
                <tr key={e.name}>
                  <th scope="row" className="mono">
                    {e.name}
                  </th>
                  <td className="mono small" title={e.digest}>
                    {shortDigest(e.digest)}
                  </td>
                  <td className="num">{formatBytes(e.size_bytes)}</td>
                  <td>{e.languages.length ? e.languages.join(', ') : <span className="muted">none known</span>}</td>
                  <td className="hide-narrow" title={e.ref && e.manifest_digest ? `${e.ref} (${e.manifest_digest})` : undefined}>
                    {e.source}
                  </td>
                  <td className="hide-narrow">
                    <time dateTime={e.created_at} title={formatTime(e.created_at)}>
                      {relativeTime(e.created_at)}
                    </time>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
