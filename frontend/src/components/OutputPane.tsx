import { openWithKey } from '../api/client';
import { useEffect, useLayoutEffect, useRef, useState } from 'react';

export interface OutputPaneProps {
  id: string;
  title: string;
  text: string;
  live: boolean;
  truncated?: boolean;
  fullUrl?: string;
  onLoadFull?: () => void;
  loadingFull?: boolean;
}

/** A stream's output, following new text unless paused. */
export function OutputPane({ id, title, text, live, truncated, fullUrl, onLoadFull, loadingFull }: OutputPaneProps) {
  const [paused, setPaused] = useState(false);
  const ref = useRef<HTMLPreElement>(null);

  useLayoutEffect(() => {
    const el = ref.current;
    if (el && !paused) el.scrollTop = el.scrollHeight;
  }, [text, paused]);

  // Scrolling up while live pauses following; scrolling back to the end resumes.
  useEffect(() => {
    const el = ref.current;
    if (!el || !live) return;
    let last = el.scrollTop;
    const onScroll = () => {
      const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
      if (el.scrollTop < last && !atEnd) setPaused(true);
      else if (atEnd) setPaused(false);
      last = el.scrollTop;
    };
    el.addEventListener('scroll', onScroll, { passive: true });
    return () => el.removeEventListener('scroll', onScroll);
  }, [live]);

  const lines = text ? text.split('\n').length - (text.endsWith('\n') ? 1 : 0) : 0;
  return (
    <section className="output" aria-label={title}>
      <div className="output-head">
        <h3 id={`${id}-title`}>
          {title}
          {live && <span className="live-pill"> live</span>}
        </h3>
        <span className="muted small">
          {lines} line{lines === 1 ? '' : 's'} · {new Blob([text]).size.toLocaleString()} bytes
        </span>
        <div className="output-actions">
          {live && (
            <button
              type="button"
              className="btn btn-small"
              aria-pressed={paused}
              aria-label={`${paused ? 'Resume' : 'Pause'} ${title} auto-scroll`}
              onClick={() => setPaused((p) => !p)}
            >
              {paused ? 'Resume auto-scroll' : 'Pause auto-scroll'}
            </button>
          )}
          {onLoadFull && (
            <button type="button" className="btn btn-small" onClick={onLoadFull} disabled={loadingFull}>
              {loadingFull ? 'Loading…' : 'Load full output'}
            </button>
          )}
          {fullUrl && (
            <a
              className="btn btn-small"
              href={fullUrl}
              target="_blank"
              rel="noreferrer"
              onClick={(e) => {
                // A plain link cannot send the API key: fetch it, then open the blob.
                e.preventDefault();
                void openWithKey(fullUrl);
              }}
            >
              Open raw
            </a>
          )}
        </div>
      </div>
      <pre ref={ref} id={id} className="output-text" tabIndex={0} role="log" aria-label={`${title} output`} aria-live="off">
        {text || <span className="muted">{live ? 'Waiting for output…' : '(empty)'}</span>}
      </pre>
      {truncated && <p className="output-note">The program wrote more than this: output was cut at the output limit.</p>}
    </section>
  );
}
