import { useEffect, useState, type ReactNode } from 'react';
import { ApiError } from '../api/client';
import type { Status } from '../api/models';
import type { Tone } from '../lib/verdict';

export function Badge({ tone = 'muted', children, title }: { tone?: Tone; children: ReactNode; title?: string }) {
  return (
    <span className={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

const STATUS_TONE: Record<Status, Tone> = {
  queued: 'info',
  running: 'info',
  completed: 'ok',
  cancelled: 'muted',
  error: 'bad',
};

export function StatusBadge({ status }: { status: Status | string }) {
  const tone = STATUS_TONE[status as Status] ?? 'muted';
  return (
    <Badge tone={tone}>
      {(status === 'running' || status === 'queued') && <span className={`dot dot-${status}`} aria-hidden="true" />}
      {status}
    </Badge>
  );
}

export function Spinner({ label = 'Loading' }: { label?: string }) {
  return (
    <div className="state state-loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" />
      <span>{label}…</span>
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state state-empty">
      <p className="state-title">{title}</p>
      {children && <div className="state-body">{children}</div>}
    </div>
  );
}

/** Loading/unreachable/not-found/other failure, with a retry button. */
export function ErrorState({ error, what = 'this page', onRetry }: { error: unknown; what?: string; onRetry?: () => void }) {
  let title = `Could not load ${what}`;
  let body: ReactNode = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiError && error.unreachable) {
    title = 'Server unreachable';
    body = 'The Crucible server is not answering. Check that `crucible serve` is running; this page retries on its own.';
  } else if (error instanceof ApiError && error.notFound) {
    title = 'Not found';
    body = `There is no ${what} with that id. It may have been deleted, or the link is wrong.`;
  }
  return (
    <div className="state state-error" role="alert">
      <p className="state-title">{title}</p>
      <p className="state-body">{body}</p>
      {onRetry && (
        <button type="button" className="btn" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function CopyButton({ text, label, className = 'btn' }: { text: string; label: string; className?: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  useEffect(() => {
    if (state === 'idle') return;
    const t = setTimeout(() => setState('idle'), 2000);
    return () => clearTimeout(t);
  }, [state]);
  async function copy() {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else {
        const ta = document.createElement('textarea');
        ta.value = text;
        ta.setAttribute('readonly', '');
        ta.style.position = 'fixed';
        ta.style.opacity = '0';
        document.body.appendChild(ta);
        ta.select();
        const ok = document.execCommand('copy');
        ta.remove();
        if (!ok) throw new Error('copy refused');
      }
      setState('copied');
    } catch {
      setState('failed');
    }
  }
  return (
    <button type="button" className={className} onClick={copy} aria-live="polite">
      {state === 'copied' ? 'Copied' : state === 'failed' ? 'Copy failed: select the text below' : label}
    </button>
  );
}

/** A labelled horizontal bar: value against a limit. */
export function UsageBar({ label, value, max, text }: { label: string; value: number; max: number; text: string }) {
  const ratio = max > 0 ? Math.min(value / max, 1) : 0;
  const tone = ratio >= 0.95 ? 'bad' : ratio >= 0.75 ? 'warn' : 'ok';
  return (
    <div className="usage">
      <div className="usage-head">
        <span className="usage-label">{label}</span>
        <span className="usage-text">{text}</span>
      </div>
      <div
        className="bar"
        role="meter"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={max}
        aria-valuenow={Math.min(value, max)}
        aria-valuetext={text}
      >
        <div className={`bar-fill bar-${tone}`} style={{ width: `${(ratio * 100).toFixed(1)}%` }} />
      </div>
    </div>
  );
}

export function Field({
  id,
  label,
  errors,
  hint,
  children,
  className,
}: {
  id: string;
  label: string;
  errors?: string[];
  hint?: string;
  children: ReactNode;
  className?: string;
}) {
  return (
    <div className={`field ${errors && errors.length ? 'field-invalid' : ''} ${className ?? ''}`}>
      <label htmlFor={id}>{label}</label>
      {children}
      {hint && (
        <p className="field-hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {errors && errors.length > 0 && (
        <p className="field-error" id={`${id}-error`} role="alert">
          {errors.join('; ')}
        </p>
      )}
    </div>
  );
}

/** aria-describedby for a control rendered inside <Field>. */
export function describedBy(id: string, errors?: string[], hint?: string): string | undefined {
  const ids = [hint ? `${id}-hint` : '', errors && errors.length ? `${id}-error` : ''].filter(Boolean);
  return ids.length ? ids.join(' ') : undefined;
}
