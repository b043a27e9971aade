/** "Copy as curl" and "copy as CLI" for a submitted request. */
import type { EvaluationRequest, Language } from '../api/models';
import { API_BASE } from '../api/client';

export function shellQuote(s: string): string {
  if (s === '') return "''";
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Strips server-filled fields so the request can be sent again as is. */
export function resubmittable(req: EvaluationRequest): EvaluationRequest {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(req)) {
    if (v === null || v === undefined) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    if (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0) continue;
    if (k === 'stdin' && v === '') continue;
    out[k] = v;
  }
  return out as unknown as EvaluationRequest;
}

export function asCurl(req: EvaluationRequest, origin: string): string {
  const body = JSON.stringify(resubmittable(req));
  return [
    `curl -sS -X POST ${shellQuote(`${origin}${API_BASE}/evaluations`)}`,
    `  -H 'Content-Type: application/json'`,
    // The key stays out of the clipboard: the command reads it from the environment.
    `  -H "Authorization: Bearer $CRUCIBLE_API_KEY"`,
    `  -d ${shellQuote(body)}`,
  ].join(' \\\n');
}

export const FILE_NAMES: Record<Language, string> = {
  python: 'main.py',
  javascript: 'main.js',
  bash: 'main.sh',
  c: 'main.c',
  cpp: 'main.cpp',
  java: 'Main.java',
};

// Limits the CLI sets by flag (`crucible submit --help`); others need the API.
const LIMIT_FLAGS: [string, string][] = [
  ['timeout_s', '--timeout'],
  ['memory_mb', '--memory'],
];

function heredoc(file: string, content: string): string {
  let tag = 'CRUCIBLE_EOF';
  while (content.includes(tag)) tag += '_';
  const body = content.endsWith('\n') ? content : `${content}\n`;
  return `cat > ${shellQuote(file)} <<'${tag}'\n${body}${tag}`;
}

/** A shell snippet that writes the program to a file and submits it with the CLI. */
export function asCli(req: EvaluationRequest): string {
  const lines: string[] = [];
  const notes: string[] = [];
  const language = (req.language ?? 'python') as Language;
  let file = FILE_NAMES[language] ?? 'main.txt';
  if (req.files && Object.keys(req.files).length > 0) {
    file = req.entrypoint ?? Object.keys(req.files)[0];
    lines.push(heredoc(file, req.files[file] ?? ''));
    notes.push('# the CLI submits one file; the other files of this request need the API (copy as curl)');
  } else {
    lines.push(heredoc(file, req.code ?? ''));
  }
  const args = ['crucible', 'submit', shellQuote(file), '--language', language];
  const limits = (req.limits ?? {}) as Record<string, number | null | undefined>;
  for (const [key, flag] of LIMIT_FLAGS) {
    const v = limits[key];
    if (v !== undefined && v !== null) args.push(flag, String(v));
  }
  const other = Object.entries(limits).filter(([k, v]) => v != null && !LIMIT_FLAGS.some(([f]) => f === k));
  if (other.length) notes.push(`# not settable from the CLI: ${other.map(([k, v]) => `${k}=${v}`).join(', ')}`);
  if (req.runtime) args.push('--runtime', req.runtime);
  if (req.priority && req.priority !== 'normal') args.push('--priority', req.priority);
  for (const [k, v] of Object.entries(req.labels ?? {})) args.push('--label', shellQuote(`${k}=${v}`));
  if (req.stdin) {
    lines.push(heredoc('stdin.txt', req.stdin));
    args.push('--stdin', 'stdin.txt');
  }
  if (req.expected_output != null) {
    lines.push(heredoc('expected.txt', req.expected_output));
    args.push('--expected-output', '"$(cat expected.txt)"');
  }
  if (req.test_code) {
    lines.push(heredoc('test_code.py', req.test_code));
    args.push('--test', 'test_code.py');
  }
  if (req.args && req.args.length) notes.push(`# program arguments need the API: ${req.args.map(shellQuote).join(' ')}`);
  args.push('--follow');
  return [...lines, ...notes, args.join(' ')].join('\n');
}
