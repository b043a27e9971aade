import { useEffect, useMemo, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import { useLocation, useNavigate } from 'react-router-dom';
import { useMutation, useQueryClient } from '@tanstack/react-query';
import { ApiError, submitEvaluation } from '../api/client';
import { LANGUAGES, type EvaluationRequest, type Language } from '../api/models';
import { CodeEditor } from '../components/CodeEditor';
import { Field, describedBy } from '../components/ui';
import { EnvironmentSelect } from '../components/EnvironmentSelect';
import { errorsFor, mapValidationErrors, unclaimedErrors, type FieldErrors } from '../lib/fieldErrors';
import { defaultForm, formToRequest, LIMIT_FIELDS, limitsToForm, requestToForm, type RunForm } from '../lib/runForm';
import { STARTERS, TEMPLATES, templateById } from '../lib/templates';

const DRAFT_KEY = 'crucible.draft';
const LANGUAGE_NAMES: Record<Language, string> = {
  python: 'Python',
  javascript: 'JavaScript',
  bash: 'Bash',
  c: 'C',
  cpp: 'C++',
  java: 'Java',
};

const KNOWN_FIELDS = [
  'code',
  'files',
  'entrypoint',
  'language',
  'stdin',
  'args',
  'limits',
  'runtime',
  'environment',
  'priority',
  'labels',
  'expected_output',
  'test_code',
];

function loadDraft(): RunForm | null {
  try {
    const raw = localStorage.getItem(DRAFT_KEY);
    return raw ? { ...defaultForm(), ...(JSON.parse(raw) as Partial<RunForm>) } : null;
  } catch {
    return null;
  }
}

const isMac = typeof navigator !== 'undefined' && /Mac|iPhone|iPad/.test(navigator.platform);

export function RunPage() {
  const location = useLocation();
  const navigate = useNavigate();
  const queryClient = useQueryClient();
  const prefill = (location.state as { request?: EvaluationRequest } | null)?.request;
  const [form, setForm] = useState<RunForm>(() => (prefill ? requestToForm(prefill) : loadDraft() ?? defaultForm()));
  const [template, setTemplate] = useState('');
  const [errors, setErrors] = useState<FieldErrors>({});
  const [formError, setFormError] = useState<string | null>(null);
  const formRef = useRef<HTMLFormElement>(null);

  // Re-run with edits arrives as router state: apply it once, then drop it from history.
  useEffect(() => {
    if (prefill) {
      setForm(requestToForm(prefill));
      navigate(location.pathname, { replace: true, state: null });
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [prefill]);

  useEffect(() => {
    try {
      localStorage.setItem(DRAFT_KEY, JSON.stringify(form));
    } catch {
      /* storage full or disabled */
    }
  }, [form]);

  const submit = useMutation({
    mutationFn: submitEvaluation,
    onSuccess: (record) => {
      if (record && record.id) {
        queryClient.setQueryData(['evaluation', record.id], record);
        navigate(`/evaluations/${encodeURIComponent(record.id)}`);
      }
    },
    onError: (err) => {
      if (err instanceof ApiError && err.status === 422 && err.issues.length > 0) {
        setErrors(mapValidationErrors(err.issues));
        setFormError('The server rejected some fields; see the messages next to them.');
      } else if (err instanceof ApiError && err.unreachable) {
        setFormError('The Crucible server cannot be reached. Is `crucible serve` running?');
      } else {
        setFormError(err instanceof Error ? err.message : String(err));
      }
    },
  });

  function run() {
    if (submit.isPending) return;
    setErrors({});
    setFormError(null);
    submit.mutate(formToRequest(form));
  }

  function onSubmit(e: FormEvent) {
    e.preventDefault();
    run();
  }

  function onKeyDown(e: KeyboardEvent<HTMLFormElement>) {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter' && !e.defaultPrevented) {
      e.preventDefault();
      run();
    }
  }

  function update<K extends keyof RunForm>(key: K, value: RunForm[K]) {
    setForm((f) => ({ ...f, [key]: value }));
  }

  function changeLanguage(lang: Language) {
    setForm((f) => {
      const pristine = f.code.trim() === '' || Object.values(STARTERS).includes(f.code);
      return { ...f, language: lang, code: pristine ? STARTERS[lang] : f.code, files: null, entrypoint: null };
    });
  }

  function loadTemplate(id: string) {
    setTemplate(id);
    const t = templateById(id);
    if (!t) return;
    setErrors({});
    setFormError(null);
    setForm((f) => ({
      ...f,
      language: t.language,
      code: t.code,
      stdin: t.stdin ?? '',
      limits: limitsToForm(t.limits),
      check: t.expected_output !== undefined ? 'expected' : 'none',
      expected_output: t.expected_output ?? '',
      files: null,
      entrypoint: null,
    }));
  }

  const e = (key: string) => errorsFor(errors, key);
  const other = useMemo(() => unclaimedErrors(errors, KNOWN_FIELDS), [errors]);
  const codeErrors = [...e('code'), ...e('files'), ...e('entrypoint')];
  const chosen = templateById(template);

  return (
    <div className="page">
      <div className="page-head">
        <h1>Run a program</h1>
        <p className="muted">
          Runs in an isolated sandbox with the limits below. Press <kbd>{isMac ? '⌘' : 'Ctrl'}</kbd>+<kbd>Enter</kbd> to run.
        </p>
      </div>
      <form ref={formRef} className="run-form" onSubmit={onSubmit} onKeyDown={onKeyDown} noValidate aria-label="Run a program">
        {(formError || other.length > 0) && (
          <div className="alert alert-bad" role="alert">
            {formError && <p>{formError}</p>}
            {other.length > 0 && (
              <ul>
                {other.map((m) => (
                  <li key={m}>{m}</li>
                ))}
              </ul>
            )}
          </div>
        )}
        <div className="run-grid">
          <section className="run-main" aria-label="Program">
            <div className="toolbar">
              <div className="field field-inline">
                <label htmlFor="template">Template</label>
                <select id="template" value={template} onChange={(ev) => loadTemplate(ev.target.value)}>
                  <option value="">Choose an example…</option>
                  {TEMPLATES.map((t) => (
                    <option key={t.id} value={t.id}>
                      {t.name}
                    </option>
                  ))}
                </select>
              </div>
              <div className={`field field-inline ${e('language').length ? 'field-invalid' : ''}`}>
                <label htmlFor="language">Language</label>
                <select
                  id="language"
                  value={form.language}
                  onChange={(ev) => changeLanguage(ev.target.value as Language)}
                  aria-invalid={e('language').length > 0}
                  aria-describedby={describedBy('language', e('language'))}
                >
                  {LANGUAGES.map((l) => (
                    <option key={l} value={l}>
                      {LANGUAGE_NAMES[l]}
                    </option>
                  ))}
                </select>
                {e('language').length > 0 && (
                  <p className="field-error" id="language-error" role="alert">
                    {e('language').join('; ')}
                  </p>
                )}
              </div>
              <button type="submit" className="btn btn-primary run-button" disabled={submit.isPending}>
                {submit.isPending ? 'Submitting…' : 'Run'}
              </button>
            </div>
            {chosen && <p className="template-desc muted">{chosen.description}</p>}
            <div className={`field ${codeErrors.length ? 'field-invalid' : ''}`}>
              <label id="code-label" htmlFor="code">
                Code{form.files && form.entrypoint ? ` (${form.entrypoint}, one of ${Object.keys(form.files).length} files)` : ''}
              </label>
              <CodeEditor
                id="code"
                value={form.code}
                onChange={(v) => update('code', v)}
                language={form.language}
                ariaLabel="Code"
                onSubmit={run}
                minHeight="18rem"
                maxHeight="60vh"
              />
              <p className="field-hint">Tab indents; press Esc then Tab to move focus out of the editor.</p>
              {codeErrors.length > 0 && (
                <p className="field-error" role="alert">
                  {codeErrors.join('; ')}
                </p>
              )}
            </div>
            <div className="two-col">
              <Field id="stdin" label="Standard input" errors={e('stdin')}>
                <textarea
                  id="stdin"
                  rows={3}
                  className="mono"
                  value={form.stdin}
                  onChange={(ev) => update('stdin', ev.target.value)}
                  aria-invalid={e('stdin').length > 0}
                  aria-describedby={describedBy('stdin', e('stdin'))}
                />
              </Field>
              <Field id="args" label="Arguments" hint="One per line." errors={e('args')}>
                <textarea
                  id="args"
                  rows={3}
                  className="mono"
                  value={form.args}
                  onChange={(ev) => update('args', ev.target.value)}
                  aria-invalid={e('args').length > 0}
                  aria-describedby={describedBy('args', e('args'), 'hint')}
                />
              </Field>
            </div>
            <fieldset className="check">
              <legend>Check the result</legend>
              <div className="radio-row" role="radiogroup" aria-label="Check mode">
                {(
                  [
                    ['none', 'No check'],
                    ['expected', 'Expected output'],
                    ['test', 'Test code'],
                  ] as const
                ).map(([v, text]) => (
                  <label key={v} className="radio">
                    <input type="radio" name="check" value={v} checked={form.check === v} onChange={() => update('check', v)} />
                    {text}
                  </label>
                ))}
              </div>
              {form.check === 'expected' && (
                <Field id="expected_output" label="Expected output (stdout must match)" errors={e('expected_output')}>
                  <textarea
                    id="expected_output"
                    rows={3}
                    className="mono"
                    value={form.expected_output}
                    onChange={(ev) => update('expected_output', ev.target.value)}
                    aria-invalid={e('expected_output').length > 0}
                    aria-describedby={describedBy('expected_output', e('expected_output'))}
                  />
                </Field>
              )}
              {form.check === 'test' && (
                <Field id="test_code" label="Test code (run after the program; passes when it exits 0)" errors={e('test_code')}>
                  <textarea
                    id="test_code"
                    rows={5}
                    className="mono"
                    value={form.test_code}
                    onChange={(ev) => update('test_code', ev.target.value)}
                    aria-invalid={e('test_code').length > 0}
                    aria-describedby={describedBy('test_code', e('test_code'))}
                  />
                </Field>
              )}
            </fieldset>
          </section>

          <aside className="run-side" aria-label="Limits and options">
            <fieldset>
              <legend>Limits</legend>
              <p className="field-hint">Empty fields use the server's defaults.</p>
              <div className="limits-grid">
                {LIMIT_FIELDS.map((f) => {
                  const id = `limit-${f.key}`;
                  const errs = e(`limits.${f.key}`);
                  return (
                    <Field key={f.key} id={id} label={`${f.label} (${f.unit})`} errors={errs}>
                      <input
                        id={id}
                        name={`limits.${f.key}`}
                        type="number"
                        inputMode="decimal"
                        min={0}
                        step={f.step}
                        placeholder={f.placeholder}
                        value={form.limits[f.key]}
                        onChange={(ev) => update('limits', { ...form.limits, [f.key]: ev.target.value })}
                        aria-invalid={errs.length > 0}
                        aria-describedby={describedBy(id, errs)}
                      />
                    </Field>
                  );
                })}
              </div>
              {(errors['limits'] ?? []).length > 0 && (
                <p className="field-error" role="alert">
                  {(errors['limits'] ?? []).join('; ')}
                </p>
              )}
            </fieldset>
            <fieldset>
              <legend>Sandbox</legend>
              <Field id="runtime" label="Runtime" errors={e('runtime')}>
                <select
                  id="runtime"
                  value={form.runtime}
                  onChange={(ev) => update('runtime', ev.target.value as RunForm['runtime'])}
                  aria-invalid={e('runtime').length > 0}
                  aria-describedby={describedBy('runtime', e('runtime'))}
                >
                  <option value="runc">runc (containers)</option>
                  <option value="crun">crun (containers, least overhead)</option>
                  <option value="gvisor">gVisor (user-space kernel, stronger isolation)</option>
                </select>
              </Field>
              <Field id="environment" label="Environment" errors={e('environment')}>
                <EnvironmentSelect
                  id="environment"
                  value={form.environment}
                  language={form.language}
                  onChange={(name) => update('environment', name)}
                  aria-invalid={e('environment').length > 0}
                  aria-describedby={describedBy('environment', e('environment'))}
                />
              </Field>
              <Field id="priority" label="Priority" errors={e('priority')}>
                <select
                  id="priority"
                  value={form.priority}
                  onChange={(ev) => update('priority', ev.target.value as RunForm['priority'])}
                  aria-invalid={e('priority').length > 0}
                  aria-describedby={describedBy('priority', e('priority'))}
                >
                  <option value="high">High</option>
                  <option value="normal">Normal</option>
                  <option value="low">Low</option>
                </select>
              </Field>
            </fieldset>
            <fieldset className={e('labels').length ? 'field-invalid' : ''}>
              <legend>Labels</legend>
              {form.labels.length === 0 && <p className="field-hint">Key/value tags to find this run later.</p>}
              {form.labels.map((l, i) => (
                <div className="label-row" key={i}>
                  <input
                    aria-label={`Label ${i + 1} key`}
                    placeholder="key"
                    value={l.key}
                    onChange={(ev) => update('labels', form.labels.map((x, j) => (j === i ? { ...x, key: ev.target.value } : x)))}
                  />
                  <input
                    aria-label={`Label ${i + 1} value`}
                    placeholder="value"
                    value={l.value}
                    onChange={(ev) => update('labels', form.labels.map((x, j) => (j === i ? { ...x, value: ev.target.value } : x)))}
                  />
                  <button
                    type="button"
                    className="btn btn-ghost btn-icon"
                    aria-label={`Remove label ${i + 1}`}
                    onClick={() => update('labels', form.labels.filter((_, j) => j !== i))}
                  >
                    ×
                  </button>
                </div>
              ))}
              <button type="button" className="btn btn-small" onClick={() => update('labels', [...form.labels, { key: '', value: '' }])}>
                Add label
              </button>
              {e('labels').length > 0 && (
                <p className="field-error" role="alert">
                  {e('labels').join('; ')}
                </p>
              )}
            </fieldset>
            <button
              type="button"
              className="btn btn-ghost btn-small"
              onClick={() => {
                setForm(defaultForm());
                setTemplate('');
                setErrors({});
                setFormError(null);
              }}
            >
              Reset form
            </button>
          </aside>
        </div>
      </form>
    </div>
  );
}
