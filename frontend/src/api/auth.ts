/**
 * The API key the UI signs in with. It lives in localStorage (this origin only) and is
 * sent as `Authorization: Bearer …` by every API call, event streams included (they
 * are fetch()-based, see sse.ts, so no key ever goes into a URL). A sign-in link
 * `/#key=crk_…` (printed by `crucible serve` on first start) stores the key and is
 * stripped from the address bar at once, before anything can log or share it.
 */
import { useSyncExternalStore } from 'react';

const STORAGE = 'crucible.apiKey';

interface AuthState {
  key: string | null;
  /** the server refused the stored key (401): ask for another */
  rejected: boolean;
}

let state: AuthState = { key: read(), rejected: false };
const listeners = new Set<() => void>();

function read(): string | null {
  try {
    return localStorage.getItem(STORAGE);
  } catch {
    return null;
  }
}

function set(next: AuthState) {
  state = next;
  listeners.forEach((l) => l());
}

export function getApiKey(): string | null {
  return state.key;
}

export function setApiKey(key: string) {
  try {
    localStorage.setItem(STORAGE, key);
  } catch {
    /* private mode: keep it in memory for this tab */
  }
  set({ key, rejected: false });
}

export function signOut() {
  try {
    localStorage.removeItem(STORAGE);
  } catch {
    /* nothing stored */
  }
  set({ key: null, rejected: false });
}

/** Called on any 401 from the API: the stored key is missing, unknown or revoked. */
export function notifyUnauthorized() {
  if (!state.rejected) set({ ...state, rejected: true });
}

export function authHeaders(): Record<string, string> {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

/** Moves a `#key=…` from the address into storage and removes it from the URL. */
export function takeKeyFromUrl(loc: Location = window.location, hist: History = window.history) {
  const m = /^#key=([^&]+)/.exec(loc.hash);
  if (!m) return;
  setApiKey(decodeURIComponent(m[1]));
  hist.replaceState(hist.state, '', loc.pathname + loc.search);
}

export function useAuth(): AuthState {
  return useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    () => state,
  );
}
