import { useEffect, useReducer, useRef } from 'react';
import { subscribe } from './api/sse';
import { initialLive, liveReducer, type LiveState } from './lib/live';

/**
 * Follows an SSE stream while `enabled`; every event goes through liveReducer.
 * `onFinal` runs when the stream ends with a final event (the caller refetches).
 */
export function useLiveEvents(url: string | null, enabled: boolean, onFinal: () => void): LiveState & { connected: boolean } {
  const [state, dispatch] = useReducer(liveReducer, initialLive);
  const connected = useRef(false);
  const onFinalRef = useRef(onFinal);
  onFinalRef.current = onFinal;
  const [, force] = useReducer((x: number) => x + 1, 0);

  useEffect(() => {
    dispatch({ type: 'reset' });
  }, [url]);

  useEffect(() => {
    if (!url || !enabled) return;
    const close = subscribe(url, {
      onOpen: () => {
        connected.current = true;
        force();
      },
      onEvent: (event, data, id) => dispatch({ type: 'event', event, data, id }),
      onError: () => {
        connected.current = false;
        force();
      },
      onFinal: () => {
        connected.current = false;
        force();
        onFinalRef.current();
      },
    });
    return () => {
      connected.current = false;
      close();
    };
  }, [url, enabled]);

  return { ...state, connected: connected.current };
}

/** Returns a throttled version of fn (leading and trailing call). */
export function useThrottled(fn: () => void, ms: number): () => void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const state = useRef<{ last: number; timer: ReturnType<typeof setTimeout> | null }>({ last: 0, timer: null });
  useEffect(() => () => {
    if (state.current.timer) clearTimeout(state.current.timer);
  }, []);
  return useRef(() => {
    const s = state.current;
    const now = Date.now();
    if (now - s.last >= ms) {
      s.last = now;
      fnRef.current();
    } else if (!s.timer) {
      s.timer = setTimeout(() => {
        s.timer = null;
        s.last = Date.now();
        fnRef.current();
      }, ms - (now - s.last));
    }
  }).current;
}
