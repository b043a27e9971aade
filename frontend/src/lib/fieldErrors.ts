/** Maps FastAPI/pydantic 422 errors onto form field keys ("limits.memory_mb"). */
import type { ValidationIssue } from '../api/models';

export type FieldErrors = Record<string, string[]>;

export const FORM_KEY = '_form';

const ROOTS = new Set(['body', 'query', 'path']);

export function issueKey(loc: ValidationIssue['loc']): string {
  const parts = [...loc];
  if (parts.length > 0 && ROOTS.has(String(parts[0]))) parts.shift();
  return parts.length === 0 ? FORM_KEY : parts.map(String).join('.');
}

function cleanMessage(msg: string): string {
  return msg.replace(/^Value error, /, '').replace(/^Assertion failed, /, '');
}

export function mapValidationErrors(issues: ValidationIssue[]): FieldErrors {
  const out: FieldErrors = {};
  for (const issue of issues) {
    const key = issueKey(issue.loc ?? []);
    (out[key] ??= []).push(cleanMessage(issue.msg ?? 'Invalid value'));
  }
  return out;
}

/**
 * Errors for one field. A field also claims errors on its sub-paths (pydantic adds
 * union-member names like "limits.memory_mb.int"), so `errorsFor(e, 'labels')` sees
 * "labels.team" too.
 */
export function errorsFor(errors: FieldErrors, key: string): string[] {
  const out: string[] = [];
  for (const [k, msgs] of Object.entries(errors)) {
    if (k === key || k.startsWith(`${key}.`)) out.push(...msgs);
  }
  return out;
}

/** Errors no known field claims, shown at the top of the form. */
export function unclaimedErrors(errors: FieldErrors, known: string[]): string[] {
  const out: string[] = [];
  for (const [k, msgs] of Object.entries(errors)) {
    const claimed = known.some((f) => k === f || k.startsWith(`${f}.`));
    if (!claimed) out.push(...msgs.map((m) => (k === FORM_KEY ? m : `${k}: ${m}`)));
  }
  return out;
}
