// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { parseJsonl } from './jsonl';

describe('parseJsonl', () => {
  it('reads one body per line and skips blanks and // comments', () => {
    const r = parseJsonl('{"language":"python","code":"print(1)"}\n\n// note\r\n{"language":"bash","code":"echo 2"}\n');
    expect(r.problems).toEqual([]);
    expect(r.items.map((i) => i.language)).toEqual(['python', 'bash']);
  });

  it('reports bad lines by number', () => {
    const r = parseJsonl(['{"language":"python","code":"ok"}', '{not json', '[1,2]', '{"language":"python"}', '{"language":"cobol","code":"x"}'].join('\n'));
    expect(r.items).toHaveLength(1);
    expect(r.problems.map((p) => p.line)).toEqual([2, 3, 4, 5]);
    expect(r.problems[0].message).toMatch(/not valid JSON/);
    expect(r.problems[1].message).toBe('expected a JSON object');
    expect(r.problems[2].message).toBe('needs "code" or "files"');
    expect(r.problems[3].message).toMatch(/unknown language "cobol"/);
  });

  it('can require a language when no default is set', () => {
    expect(parseJsonl('{"code":"x"}', { requireLanguage: true }).problems[0].message).toBe('needs "language"');
    expect(parseJsonl('{"code":"x"}').problems).toEqual([]);
  });

  it('accepts files + entrypoint and a BOM', () => {
    const r = parseJsonl('\uFEFF{"language":"python","files":{"a.py":"print(1)"},"entrypoint":"a.py"}');
    expect(r.items[0].entrypoint).toBe('a.py');
  });
});
