import { describe, expect, it } from 'vitest';
import { authHeaders, getApiKey, notifyUnauthorized, setApiKey, signOut, takeKeyFromUrl } from './auth';

describe('auth', () => {
  it('takes a key from #key= and strips it from the address', () => {
    const calls: string[] = [];
    const loc = { hash: '#key=crk_abc%2Bdef', pathname: '/dashboard', search: '?x=1' } as Location;
    const hist = { state: null, replaceState: (_s: unknown, _t: string, url: string) => calls.push(url) } as unknown as History;
    takeKeyFromUrl(loc, hist);
    expect(getApiKey()).toBe('crk_abc+def');
    expect(localStorage.getItem('crucible.apiKey')).toBe('crk_abc+def');
    expect(calls).toEqual(['/dashboard?x=1']);
    expect(authHeaders()).toEqual({ Authorization: 'Bearer crk_abc+def' });
  });

  it('leaves other hashes alone, and signs out', () => {
    const hist = { replaceState: () => { throw new Error('not expected'); } } as unknown as History;
    takeKeyFromUrl({ hash: '#section', pathname: '/', search: '' } as Location, hist);
    setApiKey('crk_x');
    notifyUnauthorized();
    signOut();
    expect(getApiKey()).toBeNull();
    expect(authHeaders()).toEqual({});
  });
});
