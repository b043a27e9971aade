/**
 * All HTTP access to the Crucible API lives here, so that field names and paths can
 * be adjusted in one place when the backend's OpenAPI document lands. Pages and
 * components never call fetch() themselves.
 */
import type {
  BatchCreated,
  BatchRecord,
  BatchRequest,
  CancelResult,
  DeadLetter,
  EnvironmentRecord,
  EvaluationPage,
  EvaluationRecord,
  EvaluationRequest,
  ExecPage,
  ExecRecord,
  ExecRequest,
  Priority,
  QueueStatus,
  SandboxCreate,
  SandboxPage,
  SandboxRecord,
  ValidationIssue,
  WorkerInfo,
} from './models';

import { authHeaders, notifyUnauthorized } from './auth';

export const API_BASE = '/api/v1';

/** Any failed API call. status 0 means the server could not be reached at all. */
export class ApiError extends Error {
  readonly status: number;
  /** The parsed response body (JSON when it was JSON). */
  readonly body: unknown;

  constructor(status: number, message: string, body?: unknown) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }

  get unreachable(): boolean {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }

  get notFound(): boolean {
    return this.status === 404;
  }

  /** Field-level problems of a 422, whichever shape the server used. */
  get issues(): ValidationIssue[] {
    return validationIssues(this.body);
  }
}

const toLoc = (where: unknown, field: string): (string | number)[] => [
  typeof where === 'string' && where ? where : 'body',
  ...field.split('.').map((p) => (/^\d+$/.test(p) ? Number(p) : p)),
];

/**
 * Normalises an error body to FastAPI-style issues ({loc, msg, type}). Accepts
 *  - FastAPI's default: {detail: [{loc, msg, type}]}
 *  - Crucible's: {detail, field?, errors?: [{field, reason, in}]}
 */
export function validationIssues(body: unknown): ValidationIssue[] {
  if (!body || typeof body !== 'object') return [];
  const b = body as Record<string, unknown>;
  if (Array.isArray(b.detail)) {
    return b.detail
      .filter((x): x is Record<string, unknown> => !!x && typeof x === 'object' && 'msg' in x)
      .map((x) => ({ loc: Array.isArray(x.loc) ? (x.loc as (string | number)[]) : [], msg: String(x.msg), type: String(x.type ?? 'value_error') }));
  }
  if (Array.isArray(b.errors) && b.errors.length > 0) {
    return b.errors
      .filter((x): x is Record<string, unknown> => !!x && typeof x === 'object')
      .map((x) => ({
        loc: typeof x.field === 'string' && x.field ? toLoc(x.in, x.field) : ['body'],
        msg: String(x.reason ?? x.msg ?? x.message ?? 'invalid'),
        type: 'value_error',
      }));
  }
  if (typeof b.field === 'string' && b.field && typeof b.detail === 'string') {
    return [{ loc: toLoc('body', b.field), msg: b.detail, type: 'value_error' }];
  }
  return [];
}

function messageFrom(status: number, body: unknown): string {
  if (body && typeof body === 'object' && 'detail' in body) {
    const d = (body as { detail: unknown }).detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d) && d.length > 0) {
      return d.map((i) => (i && typeof i === 'object' && 'msg' in i ? String(i.msg) : String(i))).join('; ');
    }
    if (d && typeof d === 'object' && 'message' in d) return String((d as { message: unknown }).message);
  }
  if (status === 404) return 'Not found';
  return `Request failed with HTTP ${status}`;
}

async function request<T>(path: string, init?: RequestInit & { json?: unknown }): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders() };
  let body = init?.body;
  if (init?.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(init.json);
  }
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: { ...headers, ...(init?.headers as object) }, body });
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') throw err;
    throw new ApiError(0, 'The Crucible server cannot be reached');
  }
  const text = await res.text();
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!res.ok) {
    if (res.status === 401) notifyUnauthorized();
    throw new ApiError(res.status, messageFrom(res.status, parsed), parsed);
  }
  return parsed as T;
}

/** Like request(), but resolves to null when the endpoint does not exist (404/405). */
async function optional<T>(path: string): Promise<T | null> {
  try {
    return await request<T>(path);
  } catch (err) {
    // 403: a researcher's key may not see admin-only pages (workers, dead letters).
    if (err instanceof ApiError && [403, 404, 405].includes(err.status)) return null;
    throw err;
  }
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- evaluations

export function submitEvaluation(body: EvaluationRequest): Promise<EvaluationRecord> {
  return request(`${API_BASE}/evaluations`, { method: 'POST', json: body });
}

export function getEvaluation(id: string, signal?: AbortSignal): Promise<EvaluationRecord> {
  return request(`${API_BASE}/evaluations/${enc(id)}`, { signal });
}

export interface EvaluationFilters {
  status?: string;
  language?: string;
  verdict?: string;
  termination?: string;
  flag?: string;
  label?: string; // key:value
  batch_id?: string;
  cursor?: string;
  limit?: number;
}

export function evaluationsQuery(filters: EvaluationFilters): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `?${qs}` : '';
}

export async function listEvaluations(filters: EvaluationFilters, signal?: AbortSignal): Promise<EvaluationPage> {
  const page = await request<EvaluationPage | EvaluationRecord[]>(
    `${API_BASE}/evaluations${evaluationsQuery(filters)}`,
    { signal },
  );
  // Tolerate a bare array while the backend settles on its envelope.
  if (Array.isArray(page)) return { items: page, next_cursor: null };
  return { items: page.items ?? [], next_cursor: page.next_cursor ?? null };
}

export function cancelEvaluation(id: string): Promise<CancelResult> {
  return request(`${API_BASE}/evaluations/${enc(id)}/cancel`, { method: 'POST' });
}

export function evaluationEventsUrl(id: string): string {
  return `${API_BASE}/evaluations/${enc(id)}/events`;
}

export function outputUrl(id: string, stream: 'stdout' | 'stderr'): string {
  return `${API_BASE}/evaluations/${enc(id)}/output/${stream}`;
}

export async function getFullOutput(id: string, stream: 'stdout' | 'stderr'): Promise<string> {
  let res: Response;
  try {
    res = await fetch(outputUrl(id, stream), { headers: authHeaders() });
  } catch {
    throw new ApiError(0, 'The Crucible server cannot be reached');
  }
  if (res.status === 401) notifyUnauthorized();
  if (!res.ok) throw new ApiError(res.status, `Could not load ${stream} (HTTP ${res.status})`);
  return res.text();
}

/**
 * Fetches an API resource with the key and hands it to the browser as a blob: a plain
 * link cannot carry the Authorization header. `download` saves it under that name;
 * otherwise it opens in a new tab.
 */
export async function openWithKey(url: string, download?: string): Promise<void> {
  const res = await fetch(url, { headers: authHeaders() });
  if (res.status === 401) notifyUnauthorized();
  if (!res.ok) throw new ApiError(res.status, `Could not load ${url} (HTTP ${res.status})`);
  const blobUrl = URL.createObjectURL(await res.blob());
  if (download) {
    const a = document.createElement('a');
    a.href = blobUrl;
    a.download = download;
    a.click();
  } else {
    window.open(blobUrl, '_blank', 'noopener');
  }
  setTimeout(() => URL.revokeObjectURL(blobUrl), 60_000);
}

export interface WhoAmI {
  id: string;
  name: string;
  role: 'admin' | 'researcher';
}

/** The signed-in key; with `key`, checks that key instead (sign-in). */
export async function whoAmI(key?: string): Promise<WhoAmI> {
  if (key === undefined) return request(`${API_BASE}/keys/me`);
  const res = await fetch(`${API_BASE}/keys/me`, { headers: { Authorization: `Bearer ${key}`, Accept: 'application/json' } });
  if (!res.ok) throw new ApiError(res.status, res.status === 401 ? 'That key is not valid (unknown or revoked).' : `Sign-in failed (HTTP ${res.status})`);
  return res.json();
}

export function fileUrl(id: string, path: string): string {
  return `${API_BASE}/evaluations/${enc(id)}/files/${path.split('/').map(enc).join('/')}`;
}

// ---------------------------------------------------------------- batches

export function createBatch(body: BatchRequest): Promise<BatchCreated> {
  return request(`${API_BASE}/batches`, { method: 'POST', json: body });
}

type Counts = Record<string, number>;

function pickCounts(raw: Record<string, unknown>, ...keys: string[]): Counts {
  for (const k of keys) {
    const v = k.split('.').reduce<unknown>((o, part) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[part] : undefined), raw);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Counts;
  }
  return {};
}

/** Normalises the batch summary, accepting a few plausible shapes for the counts. */
export function normalizeBatch(raw: Record<string, unknown>): BatchRecord {
  const status = pickCounts(raw, 'counts.status', 'counts.by_status', 'by_status', 'status_counts');
  const termination = pickCounts(raw, 'counts.termination', 'counts.by_termination', 'by_termination', 'termination_counts');
  const verdict = pickCounts(raw, 'counts.verdict', 'counts.by_verdict', 'by_verdict', 'verdict_counts');
  const count = Number(raw.count ?? raw.total ?? Object.values(status).reduce((a, b) => a + b, 0));
  const done = typeof raw.done === 'number' ? raw.done : (status.completed ?? 0) + (status.cancelled ?? 0) + (status.error ?? 0);
  let progress = typeof raw.progress === 'number' ? raw.progress : count ? done / count : 0;
  if (progress > 1) progress = progress / 100; // a percentage
  if (raw.finished === true) progress = 1;
  const passRate = typeof raw.pass_rate === 'number' ? raw.pass_rate : null;
  return {
    id: String(raw.id),
    count,
    created_at: typeof raw.created_at === 'string' ? raw.created_at : undefined,
    status: typeof raw.status === 'string' ? raw.status : undefined,
    counts: { status, termination, verdict },
    done,
    finished: raw.finished === true || progress >= 1,
    pass_rate: passRate,
    progress,
  };
}

export async function getBatch(id: string): Promise<BatchRecord> {
  return normalizeBatch(await request<Record<string, unknown>>(`${API_BASE}/batches/${enc(id)}`));
}

export function cancelBatch(id: string): Promise<unknown> {
  return request(`${API_BASE}/batches/${enc(id)}/cancel`, { method: 'POST' });
}

export function batchEventsUrl(id: string): string {
  return `${API_BASE}/batches/${enc(id)}/events`;
}

// ---------------------------------------------------------------- operations

export function normalizeQueue(raw: Record<string, unknown>): QueueStatus {
  const depthRaw = (raw.depth ?? raw.queued ?? raw.by_priority ?? {}) as unknown;
  const depth: Partial<Record<Priority, number>> = {};
  if (depthRaw && typeof depthRaw === 'object') {
    for (const p of ['high', 'normal', 'low'] as const) {
      const v = (depthRaw as Record<string, unknown>)[p];
      if (typeof v === 'number') depth[p] = v;
    }
  } else if (typeof depthRaw === 'number') {
    depth.normal = depthRaw;
  }
  return {
    depth,
    running: Number(raw.running ?? 0),
    capacity: Number(raw.capacity ?? raw.max_concurrency ?? 0),
  };
}

export async function getQueue(): Promise<QueueStatus> {
  return normalizeQueue(await request<Record<string, unknown>>(`${API_BASE}/queue`));
}

function listOf<T>(raw: unknown, key: string): T[] {
  if (Array.isArray(raw)) return raw as T[];
  if (raw && typeof raw === 'object') {
    const v = (raw as Record<string, unknown>)[key] ?? (raw as Record<string, unknown>).items;
    if (Array.isArray(v)) return v as T[];
  }
  return [];
}

let pathsPromise: Promise<Set<string> | null> | null = null;

/**
 * The paths the server's OpenAPI document lists (null if it can't be read). Optional
 * endpoints are probed only when listed, so a single-node server's missing
 * /workers does not log a 404 in the browser console on every poll.
 */
export function apiPaths(): Promise<Set<string> | null> {
  pathsPromise ??= request<{ paths?: Record<string, unknown> }>(`${API_BASE}/openapi.json`)
    .then((doc) => new Set(Object.keys(doc.paths ?? {})))
    .catch(() => {
      pathsPromise = null; // try again next time
      return null;
    });
  return pathsPromise;
}

async function optionalListed<T>(path: string): Promise<T | null> {
  const paths = await apiPaths();
  if (paths && !paths.has(path)) return null;
  return optional<T>(path);
}

/** null when the server runs in single-node mode (endpoint absent or 404). */
export async function getWorkers(): Promise<WorkerInfo[] | null> {
  const raw = await optionalListed<unknown>(`${API_BASE}/workers`);
  return raw === null ? null : listOf<WorkerInfo>(raw, 'workers');
}

export async function getDeadLetters(): Promise<DeadLetter[] | null> {
  const raw = await optionalListed<unknown>(`${API_BASE}/dead-letters`);
  return raw === null ? null : listOf<DeadLetter>(raw, 'dead_letters');
}

export interface Health {
  ok: boolean;
  ready: boolean;
}

export async function getHealth(): Promise<Health> {
  const probe = async (path: string) => {
    try {
      const res = await fetch(path, { headers: { Accept: 'application/json' } });
      return res.ok;
    } catch {
      return false;
    }
  };
  const [ok, ready] = await Promise.all([probe('/healthz'), probe('/readyz')]);
  return { ok, ready };
}

// ---------------------------------------------------------------- environments

export function listEnvironments(signal?: AbortSignal): Promise<EnvironmentRecord[]> {
  return request(`${API_BASE}/environments`, { signal });
}

// ---------------------------------------------------------------- sandboxes

export function createSandbox(body: SandboxCreate = {}): Promise<SandboxRecord> {
  return request(`${API_BASE}/sandboxes`, { method: 'POST', json: body });
}

export async function listSandboxes(params: { status?: string; cursor?: string; limit?: number } = {}, signal?: AbortSignal): Promise<SandboxPage> {
  return request(`${API_BASE}/sandboxes${evaluationsQuery(params)}`, { signal });
}

export function getSandbox(id: string, signal?: AbortSignal): Promise<SandboxRecord> {
  return request(`${API_BASE}/sandboxes/${enc(id)}`, { signal });
}

export function deleteSandbox(id: string): Promise<void> {
  return request(`${API_BASE}/sandboxes/${enc(id)}`, { method: 'DELETE' });
}

export function execInSandbox(id: string, body: ExecRequest): Promise<ExecRecord> {
  return request(`${API_BASE}/sandboxes/${enc(id)}/exec`, { method: 'POST', json: body });
}

export function listSandboxExecs(id: string, cursor?: string, signal?: AbortSignal): Promise<ExecPage> {
  return request(`${API_BASE}/sandboxes/${enc(id)}/execs${evaluationsQuery({ cursor, limit: 500 })}`, { signal });
}

export function sandboxEventsUrl(id: string): string {
  return `${API_BASE}/sandboxes/${enc(id)}/events`;
}
