import { useState, type FormEvent } from 'react';
import { whoAmI } from '../api/client';
import { setApiKey } from '../api/auth';

/** Asks for an API key when there is none, or the server refused the stored one. */
export function SignInPage({ rejected }: { rejected: boolean }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function onSubmit(e: FormEvent) {
    e.preventDefault();
    const trimmed = key.trim();
    if (!trimmed) return setError('Paste an API key.');
    setBusy(true);
    setError(null);
    try {
      await whoAmI(trimmed);
      setApiKey(trimmed);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="page signin">
      <h1>Sign in</h1>
      <form className="card" onSubmit={onSubmit} aria-labelledby="signin-h">
        <h2 id="signin-h">API key</h2>
        {rejected && (
          <p className="field-error" role="alert">
            The server did not accept the stored key (unknown or revoked). Sign in again.
          </p>
        )}
        <div className="field">
          <label htmlFor="api-key">Key</label>
          <input
            id="api-key"
            type="password"
            autoComplete="off"
            spellCheck={false}
            placeholder="crk_…"
            value={key}
            onChange={(e) => setKey(e.target.value)}
            aria-describedby="api-key-hint"
            aria-invalid={error ? true : undefined}
          />
          <p className="field-hint" id="api-key-hint">
            From <code>crucible keys create --name you</code>, an admin, or the sign-in link <code>crucible serve</code> printed on its first start.
            The key is kept in this browser only.
          </p>
          {error && (
            <p className="field-error" role="alert">
              {error}
            </p>
          )}
        </div>
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
      </form>
    </div>
  );
}
