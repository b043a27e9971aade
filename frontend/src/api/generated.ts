/**
 * The UI's API type names, mapped onto the types generated from the backend's
 * OpenAPI document (src/api/schema.d.ts, `npm run gen:api`). Shapes the UI derives
 * itself (the normalised batch and queue summaries) stay in ./types.
 */
import type { components } from './schema';

type S = components['schemas'];

export { LANGUAGES, STATUSES, TERMINATIONS, VERDICTS } from './types';
export type { Language, BatchRecord, QueueStatus } from './types';

export type Status = S['Status'];
export type Termination = S['Termination'];
export type Verdict = S['Verdict'];
export type Priority = S['Priority'];
export type RuntimeName = S['RuntimeInfo']['name'];
export type Limits = S['Limits'];
/** A submission body (POST /evaluations, one line of a batch). */
export type EvaluationRequest = S['EvaluationCreate'];
/** The submission as it ran (defaults applied), inside a record. */
export type ResolvedRequest = S['EvaluationRequest'];
export type FileInfo = S['FileInfo'];
export type RunResult = S['ResultPublic'];
export type EvaluationRecord = S['EvaluationPublic'];
export type EvaluationPage = S['EvaluationList'];
export type BatchRequest = S['BatchCreate'];
export type BatchCreated = S['BatchCreated'];
export type CancelResult = S['CancelPublic'];
export type WorkerInfo = S['WorkerPublic'];
export type DeadLetter = S['DeadLetterPublic'];
// Long-lived (agent) sandboxes.
export type SandboxRecord = S['SandboxPublic'];
export type SandboxPage = S['SandboxList'];
export type SandboxCreate = S['SandboxCreate'];
export type SandboxStatus = S['SandboxStatus'];
export type ExecRecord = S['ExecPublic'];
export type ExecPage = S['ExecList'];
export type ExecRequest = S['ExecCreate'];
// Environments: named, read-only root file systems runs can name.
export type EnvironmentRecord = S['EnvironmentPublic'];
// Every 422 is documented in Crucible's ErrorPublic shape now; client.ts still reads
// FastAPI's item shape too, kept in ./types.
export type { ValidationIssue } from './types';
