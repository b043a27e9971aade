/**
 * Hand-written mirror of the API contract (issue 5), used until the backend commits
 * src/crucible/api/openapi.json. `src/api/models.ts` re-exports these names; once the
 * generated `schema.d.ts` exists, that file switches to `./generated` in one line.
 */

export const LANGUAGES = ['python', 'javascript', 'bash', 'c', 'cpp', 'java'] as const;
export type Language = (typeof LANGUAGES)[number];

export const STATUSES = ['queued', 'running', 'completed', 'cancelled', 'error'] as const;
export type Status = (typeof STATUSES)[number];

export const TERMINATIONS = [
  'exited',
  'timeout',
  'memory_limit',
  'output_limit',
  'compile_error',
  'cancelled',
] as const;
export type Termination = (typeof TERMINATIONS)[number];

export const VERDICTS = ['passed', 'failed'] as const;
export type Verdict = (typeof VERDICTS)[number];

export type RuntimeName = 'runc' | 'crun' | 'gvisor';
export type Priority = 'high' | 'normal' | 'low';

export interface Limits {
  timeout_s: number;
  cpu_s: number;
  memory_mb: number;
  pids: number;
  cpus: number;
  output_bytes: number;
  disk_mb: number;
}

/** Body of POST /api/v1/evaluations (and one line of a batch JSONL file). */
export interface EvaluationRequest {
  language?: string | null;
  code?: string | null;
  files?: Record<string, string> | null;
  entrypoint?: string | null;
  stdin?: string;
  args?: string[];
  limits?: Partial<Limits>;
  runtime?: RuntimeName;
  priority?: Priority;
  labels?: Record<string, string>;
  expected_output?: string | null;
  test_code?: string | null;
}

/** The submission as it ran: defaults applied, limits resolved. */
export interface ResolvedRequest {
  language: string;
  code: string | null;
  files: Record<string, string> | null;
  entrypoint: string | null;
  stdin: string;
  args: string[];
  limits: Limits;
  runtime: RuntimeName;
  priority: Priority;
  labels: Record<string, string>;
  expected_output: string | null;
  test_code: string | null;
}

export interface CancelResult {
  id: string;
  status: Status;
}

export interface FileInfo {
  path: string;
  size: number;
}

export interface RunResult {
  termination: Termination;
  exit_code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  /** stdout here is a preview; GET …/output/stdout has all of it. */
  stdout_inline_truncated?: boolean;
  stderr_inline_truncated?: boolean;
  wall_ms: number;
  cpu_ms: number;
  peak_memory_bytes: number;
  files: FileInfo[];
  runtime: { name: RuntimeName; version: string };
  limits: Limits;
  events: { oom_kill: number; pids_limit: number };
  verdict: Verdict | null;
}

export interface EvaluationRecord {
  id: string;
  status: Status;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  queue_wait_ms: number | null;
  attempts: number;
  batch_id: string | null;
  request: ResolvedRequest;
  error: string | null;
  result: RunResult | null;
  /** the API key that submitted it */
  owner_key_id?: string | null;
  /** static-scan signals of the code (informational; never blocks a run) */
  flags?: ScanFlag[];
}

export const SCAN_FLAGS = ['process', 'network', 'ffi', 'file_write', 'dynamic_code'] as const;
export type ScanFlag = (typeof SCAN_FLAGS)[number];

export interface EvaluationPage {
  items: EvaluationRecord[];
  next_cursor: string | null;
}

export interface BatchRequest {
  items: EvaluationRequest[];
  defaults?: Partial<EvaluationRequest>;
}

export interface BatchCreated {
  id: string;
  count: number;
}

export interface BatchRecord {
  id: string;
  count: number;
  created_at?: string;
  status?: string;
  counts?: {
    status?: Partial<Record<Status, number>>;
    termination?: Partial<Record<Termination, number>>;
    verdict?: Partial<Record<Verdict | 'none', number>>;
  };
  /** evaluations in a final status */
  done: number;
  finished: boolean;
  pass_rate: number | null;
  progress: number;
}

export interface QueueStatus {
  depth: Partial<Record<Priority, number>>;
  running: number;
  capacity: number;
}

export interface WorkerInfo {
  id: string;
  hostname?: string;
  running?: number;
  capacity?: number;
  last_heartbeat?: string;
  status?: string;
}

export interface DeadLetter {
  id: string;
  evaluation_id?: string;
  error?: string;
  attempts?: number;
  created_at?: string;
}

/** FastAPI validation error item. */
export interface ValidationIssue {
  loc: (string | number)[];
  msg: string;
  type: string;
}
