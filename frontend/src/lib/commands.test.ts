// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { asCli, asCurl, resubmittable, shellQuote } from './commands';

describe('copy as curl / CLI', () => {
  it('quotes for the shell', () => {
    expect(shellQuote('plain-word')).toBe('plain-word');
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
    expect(shellQuote('')).toBe("''");
  });

  it('drops empty fields before resubmitting', () => {
    expect(resubmittable({ language: 'python', code: 'x', stdin: '', args: [], labels: {}, files: null })).toEqual({ language: 'python', code: 'x' });
  });

  it('builds a curl command against this origin', () => {
    const cmd = asCurl({ language: 'python', code: "print('hi')\n" }, 'http://localhost:8000');
    expect(cmd).toContain("curl -sS -X POST http://localhost:8000/api/v1/evaluations");
    expect(cmd).toContain(`-d '{"language":"python","code":"print('\\''hi'\\'')\\n"}'`);
  });

  it('builds a CLI snippet with the flags the CLI has', () => {
    const cmd = asCli({
      language: 'python',
      code: 'print(1)\n',
      limits: { timeout_s: 5, memory_mb: 128, pids: 32 },
      priority: 'high',
      labels: { team: 'red' },
      expected_output: '1\n',
    });
    expect(cmd).toContain("cat > main.py <<'CRUCIBLE_EOF'\nprint(1)\nCRUCIBLE_EOF");
    expect(cmd).toContain('crucible submit main.py --language python --timeout 5 --memory 128 --priority high --label team=red --expected-output "$(cat expected.txt)" --follow');
    expect(cmd).toContain('# not settable from the CLI: pids=32');
  });
});
