import { useMemo, useState, type ChangeEvent, type FormEvent } from 'react';
import { Link, useNavigate } from 'react-router-dom';
import { useMutation } from '@tanstack/react-query';
import { ApiError, createBatch } from '../api/client';
import { LANGUAGES, type EvaluationRequest, type Language, type Priority } from '../api/models';
import { Field } from '../components/ui';
import { parseJsonl } from '../lib/jsonl';
import { rememberBatch, recentBatches } from '../lib/recentBatches';
import { relativeTime, shortId } from '../lib/format';

export const EXAMPLE_JSONL = [
  { language: 'python', code: 'print(sum(range(10)))\n', expected_output: '45\n', labels: { task: 'sum' } },
  { language: 'python', code: 'print(sum(range(11)))\n', expected_output: '45\n', labels: { task: 'sum-off-by-one' } },
  { language: 'javascript', code: 'console.log([3,1,2].sort().join(","));\n', expected_output: '1,2,3\n', labels: { task: 'sort' } },
  { language: 'bash', code: 'echo $((6 * 7))\n', expected_output: '42\n', labels: { task: 'arith' } },
  { language: 'python', code: 'while True:\n    pass\n', limits: { timeout_s: 2, cpu_s: 1 }, labels: { task: 'spin' } },
  { language: 'python', code: 'raise SystemExit(3)\n', labels: { task: 'exit-3' } },
]
  .map((o) => JSON.stringify(o))
  .join('\n');

/** Maps "items.3.code" style 422 locations to the JSONL line they came from. */
function describeIssue(loc: (string | number)[], lineOf: number[]): string {
  const parts = loc[0] === 'body' ? loc.slice(1) : loc;
  if (parts[0] === 'items' && typeof parts[1] === 'number') {
    const line = lineOf[parts[1]];
    return `Line ${line ?? Number(parts[1]) + 1}${parts.length > 2 ? ` (${parts.slice(2).join('.')})` : ''}`;
  }
  return parts.join('.') || 'Request';
}

export function BatchesPage() {
  const navigate = useNavigate();
  const [text, setText] = useState('');
  const [fileName, setFileName] = useState<string | null>(null);
  const [language, setLanguage] = useState<Language | ''>('');
  const [priority, setPriority] = useState<Priority>('low');
  const [timeout, setTimeoutS] = useState('');
  const [memory, setMemory] = useState('');
  const [labelText, setLabelText] = useState('');
  const [serverErrors, setServerErrors] = useState<string[]>([]);
  const recent = useMemo(() => recentBatches(), []);

  const parsed = useMemo(() => parseJsonl(text, { requireLanguage: language === '' }), [text, language]);
  // The source line of each accepted item, to point 422 errors at lines.
  const lineOf = useMemo(() => {
    const out: number[] = [];
    const bad = new Set(parsed.problems.map((p) => p.line));
    text.split(/\r?\n/).forEach((l, i) => {
      const t = l.trim();
      if (t && !t.startsWith('//') && !bad.has(i + 1)) out.push(i + 1);
    });
    return out;
  }, [text, parsed]);

  const create = useMutation({
    mutationFn: createBatch,
    onSuccess: (b) => {
      rememberBatch({ id: b.id, count: b.count ?? parsed.items.length, created_at: new Date().toISOString(), name: fileName ?? undefined });
      navigate(`/batches/${encodeURIComponent(b.id)}`);
    },
    onError: (err) => {
      if (err instanceof ApiError && err.issues.length > 0) {
        setServerErrors(err.issues.map((i) => `${describeIssue(i.loc, lineOf)}: ${i.msg}`));
      } else if (err instanceof ApiError && err.unreachable) {
        setServerErrors(['The Crucible server cannot be reached.']);
      } else {
        setServerErrors([(err as Error).message]);
      }
    },
  });

  async function onFile(e: ChangeEvent<HTMLInputElement>) {
    const file = e.target.files?.[0];
    if (!file) return;
    setFileName(file.name);
    setText(await file.text());
  }

  function onSubmit(e: FormEvent) {
    e.preventDefault();
    setServerErrors([]);
    if (parsed.items.length === 0 || parsed.problems.length > 0) return;
    const defaults: Partial<EvaluationRequest> = { priority };
    if (language) defaults.language = language;
    const limits: Record<string, number> = {};
    if (timeout) limits.timeout_s = Number(timeout);
    if (memory) limits.memory_mb = Number(memory);
    if (Object.keys(limits).length) defaults.limits = limits;
    const labels: Record<string, string> = {};
    for (const pair of labelText.split(',')) {
      const [k, ...v] = pair.split('=');
      if (k.trim()) labels[k.trim()] = v.join('=').trim();
    }
    if (Object.keys(labels).length) defaults.labels = labels;
    create.mutate({ items: parsed.items, defaults });
  }

  const canSubmit = parsed.items.length > 0 && parsed.problems.length === 0 && !create.isPending;

  return (
    <div className="page">
      <div className="page-head">
        <h1>Batches</h1>
        <p className="muted">Submit many programs at once from a JSONL file: one evaluation request (JSON object) per line.</p>
      </div>
      <div className="batch-grid">
        <form className="card" onSubmit={onSubmit} aria-label="Create a batch">
          <h2>New batch</h2>
          <div className="field">
            <label htmlFor="jsonl-file">Upload a .jsonl file</label>
            <input id="jsonl-file" type="file" accept=".jsonl,.ndjson,.json,.txt,application/x-ndjson,application/json,text/plain" onChange={onFile} />
          </div>
          <div className="field">
            <div className="label-row-between">
              <label htmlFor="jsonl">Or paste JSONL</label>
              <button type="button" className="btn btn-small btn-ghost" onClick={() => { setText(EXAMPLE_JSONL); setFileName('example.jsonl'); }}>
                Load example
              </button>
            </div>
            <textarea
              id="jsonl"
              className="mono"
              rows={10}
              spellCheck={false}
              placeholder={'{"language": "python", "code": "print(1)", "expected_output": "1\\n"}'}
              value={text}
              onChange={(e) => setText(e.target.value)}
              aria-describedby="jsonl-summary"
              aria-invalid={parsed.problems.length > 0}
            />
            <p id="jsonl-summary" className={parsed.problems.length ? 'field-error' : 'field-hint'} aria-live="polite">
              {text.trim() === ''
                ? 'Each line needs "code" (or "files" + "entrypoint") and a "language", unless set below.'
                : `${parsed.items.length} item${parsed.items.length === 1 ? '' : 's'} ready${parsed.problems.length ? `, ${parsed.problems.length} line${parsed.problems.length === 1 ? '' : 's'} with problems` : ''}.`}
            </p>
            {parsed.problems.length > 0 && (
              <ul className="problems" aria-label="Problems in the JSONL">
                {parsed.problems.slice(0, 20).map((p) => (
                  <li key={p.line}>
                    Line {p.line}: {p.message}
                  </li>
                ))}
                {parsed.problems.length > 20 && <li>…and {parsed.problems.length - 20} more</li>}
              </ul>
            )}
          </div>
          <fieldset>
            <legend>Defaults for every item</legend>
            <div className="limits-grid">
              <Field id="b-language" label="Language">
                <select id="b-language" value={language} onChange={(e) => setLanguage(e.target.value as Language | '')}>
                  <option value="">From each line</option>
                  {LANGUAGES.map((l) => (
                    <option key={l} value={l}>
                      {l}
                    </option>
                  ))}
                </select>
              </Field>
              <Field id="b-priority" label="Priority">
                <select id="b-priority" value={priority} onChange={(e) => setPriority(e.target.value as Priority)}>
                  <option value="high">High</option>
                  <option value="normal">Normal</option>
                  <option value="low">Low</option>
                </select>
              </Field>
              <Field id="b-timeout" label="Wall time (s)">
                <input id="b-timeout" type="number" min={0} step="0.1" placeholder="default" value={timeout} onChange={(e) => setTimeoutS(e.target.value)} />
              </Field>
              <Field id="b-memory" label="Memory (MB)">
                <input id="b-memory" type="number" min={0} step="1" placeholder="default" value={memory} onChange={(e) => setMemory(e.target.value)} />
              </Field>
            </div>
            <Field id="b-labels" label="Labels" hint="key=value, comma-separated">
              <input id="b-labels" placeholder="experiment=baseline" value={labelText} onChange={(e) => setLabelText(e.target.value)} aria-describedby="b-labels-hint" />
            </Field>
          </fieldset>
          {serverErrors.length > 0 && (
            <div className="alert alert-bad" role="alert">
              <p>The server rejected the batch:</p>
              <ul>
                {serverErrors.slice(0, 20).map((m, i) => (
                  <li key={i}>{m}</li>
                ))}
              </ul>
            </div>
          )}
          <button type="submit" className="btn btn-primary" disabled={!canSubmit}>
            {create.isPending ? 'Submitting…' : `Submit ${parsed.items.length || ''} item${parsed.items.length === 1 ? '' : 's'}`}
          </button>
        </form>
        <section className="card" aria-labelledby="recent-h">
          <h2 id="recent-h">Recent batches</h2>
          {recent.length === 0 ? (
            <p className="muted small">Batches you create from this browser are listed here.</p>
          ) : (
            <ul className="recent">
              {recent.map((b) => (
                <li key={b.id}>
                  <Link to={`/batches/${encodeURIComponent(b.id)}`} className="mono">
                    {shortId(b.id)}
                  </Link>{' '}
                  <span className="muted small">
                    {b.name ? `${b.name} · ` : ''}
                    {b.count} items · {relativeTime(b.created_at)}
                  </span>
                </li>
              ))}
            </ul>
          )}
        </section>
      </div>
    </div>
  );
}
