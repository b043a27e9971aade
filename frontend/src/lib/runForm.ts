/** The Run page's form state and its conversion to and from an API request. */
import { LANGUAGES, type EvaluationRequest, type Language, type Limits, type Priority, type RuntimeName } from '../api/models';
import { STARTERS } from './templates';

export type LimitKey = keyof Limits;
export type CheckMode = 'none' | 'expected' | 'test';

export interface RunForm {
  language: Language;
  code: string;
  stdin: string;
  args: string; // one per line
  limits: Record<LimitKey, string>;
  runtime: RuntimeName;
  /** an environment's name; 'host' is the host's toolchain */
  environment: string;
  priority: Priority;
  labels: { key: string; value: string }[];
  check: CheckMode;
  expected_output: string;
  test_code: string;
  files?: Record<string, string> | null;
  entrypoint?: string | null;
}

/** Limit fields as shown: the UI unit and its factor to the API unit. */
export const LIMIT_FIELDS: { key: LimitKey; label: string; unit: string; factor: number; step: string; placeholder: string }[] = [
  { key: 'timeout_s', label: 'Wall time', unit: 's', factor: 1, step: '0.1', placeholder: '10' },
  { key: 'cpu_s', label: 'CPU time', unit: 's', factor: 1, step: '0.1', placeholder: '10' },
  { key: 'memory_mb', label: 'Memory', unit: 'MB', factor: 1, step: '1', placeholder: '256' },
  { key: 'cpus', label: 'CPUs', unit: 'cores', factor: 1, step: '0.1', placeholder: '1' },
  { key: 'pids', label: 'Processes', unit: 'pids', factor: 1, step: '1', placeholder: '64' },
  { key: 'output_bytes', label: 'Output', unit: 'KB', factor: 1024, step: '1', placeholder: '1024' },
  { key: 'disk_mb', label: 'Disk', unit: 'MB', factor: 1, step: '1', placeholder: '64' },
];

export const EMPTY_LIMITS: Record<LimitKey, string> = {
  timeout_s: '',
  cpu_s: '',
  memory_mb: '',
  cpus: '',
  pids: '',
  output_bytes: '',
  disk_mb: '',
};

export function defaultForm(): RunForm {
  return {
    language: 'python',
    code: STARTERS.python,
    stdin: '',
    args: '',
    limits: { ...EMPTY_LIMITS },
    runtime: 'crun',
    environment: 'host',
    priority: 'normal',
    labels: [],
    check: 'none',
    expected_output: '',
    test_code: '',
  };
}

export function limitsToForm(limits: Partial<Record<LimitKey, number | null>> | null | undefined): Record<LimitKey, string> {
  const out = { ...EMPTY_LIMITS };
  for (const f of LIMIT_FIELDS) {
    const v = limits?.[f.key];
    if (typeof v === 'number') out[f.key] = String(Number((v / f.factor).toFixed(3)));
  }
  return out;
}

export function formToRequest(form: RunForm): EvaluationRequest {
  const limits: Partial<Limits> = {};
  for (const f of LIMIT_FIELDS) {
    const raw = form.limits[f.key].trim();
    if (raw === '') continue;
    const n = Number(raw);
    // Send what was typed when it is not a number: the API's 422 explains it by the field.
    limits[f.key] = (Number.isFinite(n) ? Math.round(n * f.factor * 1000) / 1000 : raw) as number;
  }
  const labels: Record<string, string> = {};
  for (const { key, value } of form.labels) if (key.trim()) labels[key.trim()] = value;
  const req: EvaluationRequest = {
    language: form.language,
    stdin: form.stdin,
    args: form.args.split('\n').filter((a) => a !== ''),
    limits,
    runtime: form.runtime,
    priority: form.priority,
    labels,
  };
  if (form.environment && form.environment !== 'host') req.environment = form.environment;
  if (form.files && Object.keys(form.files).length > 0) {
    // Multi-file request: the editor edits the entrypoint, the other files ride along.
    req.files = form.entrypoint ? { ...form.files, [form.entrypoint]: form.code } : form.files;
    req.entrypoint = form.entrypoint ?? null;
  } else {
    req.code = form.code;
  }
  if (form.check === 'expected') req.expected_output = form.expected_output;
  if (form.check === 'test') req.test_code = form.test_code;
  return req;
}

export function requestToForm(req: EvaluationRequest): RunForm {
  const base = defaultForm();
  const files = req.files && Object.keys(req.files).length > 0 ? req.files : null;
  return {
    ...base,
    language: (LANGUAGES as readonly string[]).includes(req.language ?? '') ? (req.language as Language) : base.language,
    code: req.code ?? (files && req.entrypoint ? files[req.entrypoint] ?? '' : ''),
    stdin: req.stdin ?? '',
    args: (req.args ?? []).join('\n'),
    limits: limitsToForm(req.limits),
    runtime: req.runtime ?? 'crun',
    environment: req.environment ?? 'host',
    priority: req.priority ?? 'normal',
    labels: Object.entries(req.labels ?? {}).map(([key, value]) => ({ key, value: String(value) })),
    check: req.test_code ? 'test' : req.expected_output != null ? 'expected' : 'none',
    expected_output: req.expected_output ?? '',
    test_code: req.test_code ?? '',
    files,
    entrypoint: files ? req.entrypoint ?? null : null,
  };
}
