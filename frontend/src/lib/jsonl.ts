/** Parses a JSONL batch file: one evaluation body per line. */
import type { EvaluationRequest } from '../api/models';
import { LANGUAGES } from '../api/models';

export interface JsonlProblem {
  line: number; // 1-based
  message: string;
}

export interface JsonlResult {
  items: EvaluationRequest[];
  problems: JsonlProblem[];
}

export function parseJsonl(text: string, opts: { requireLanguage?: boolean } = {}): JsonlResult {
  const items: EvaluationRequest[] = [];
  const problems: JsonlProblem[] = [];
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('//')) return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      problems.push({ line: i + 1, message: `not valid JSON (${(err as Error).message})` });
      return;
    }
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      problems.push({ line: i + 1, message: 'expected a JSON object' });
      return;
    }
    const body = value as Record<string, unknown>;
    if (body.code === undefined && body.files === undefined) {
      problems.push({ line: i + 1, message: 'needs "code" or "files"' });
      return;
    }
    if (body.language !== undefined && !(LANGUAGES as readonly string[]).includes(String(body.language))) {
      problems.push({ line: i + 1, message: `unknown language "${String(body.language)}"` });
      return;
    }
    if (opts.requireLanguage && body.language === undefined) {
      problems.push({ line: i + 1, message: 'needs "language"' });
      return;
    }
    items.push(body as unknown as EvaluationRequest);
  });
  return { items, problems };
}
