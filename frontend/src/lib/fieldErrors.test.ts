// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { validationIssues } from '../api/client';
import { errorsFor, issueKey, mapValidationErrors, unclaimedErrors } from './fieldErrors';

describe('422 field error mapping', () => {
  it('maps FastAPI locations to dotted field keys', () => {
    expect(issueKey(['body', 'limits', 'memory_mb'])).toBe('limits.memory_mb');
    expect(issueKey(['body'])).toBe('_form');
    expect(issueKey(['query', 'label'])).toBe('label');
    expect(issueKey(['body', 'items', 3, 'code'])).toBe('items.3.code');
  });

  it('groups messages by field and cleans pydantic prefixes', () => {
    const errors = mapValidationErrors([
      { loc: ['body', 'limits', 'memory_mb'], msg: 'Input should be less than or equal to 4096', type: 'less_than_equal' },
      { loc: ['body'], msg: 'Value error, give code, or files and entrypoint', type: 'value_error' },
    ]);
    expect(errors['limits.memory_mb']).toEqual(['Input should be less than or equal to 4096']);
    expect(errors._form).toEqual(['give code, or files and entrypoint']);
  });

  it('lets a field claim errors on its sub-paths and reports the rest', () => {
    const errors = mapValidationErrors([
      { loc: ['body', 'labels', 'a:b', '[key]'], msg: 'bad key', type: 'x' },
      { loc: ['body', 'mystery'], msg: 'extra', type: 'x' },
    ]);
    expect(errorsFor(errors, 'labels')).toEqual(['bad key']);
    expect(unclaimedErrors(errors, ['labels'])).toEqual(['mystery: extra']);
  });

  it("normalises Crucible's error bodies", () => {
    expect(
      validationIssues({
        detail: 'limits.memory_mb: too big',
        field: 'limits.memory_mb',
        errors: [{ field: 'limits.memory_mb', reason: 'Input should be less than or equal to 4096', in: 'body' }],
      }),
    ).toEqual([{ loc: ['body', 'limits', 'memory_mb'], msg: 'Input should be less than or equal to 4096', type: 'value_error' }]);
    expect(validationIssues({ detail: 'limits.pids must be between 4 and 1024, got 1', field: 'limits.pids' })).toEqual([
      { loc: ['body', 'limits', 'pids'], msg: 'limits.pids must be between 4 and 1024, got 1', type: 'value_error' },
    ]);
    expect(validationIssues({ detail: [{ loc: ['body', 'items', 2, 'code'], msg: 'x', type: 't' }] })[0].loc).toEqual([
      'body',
      'items',
      2,
      'code',
    ]);
    expect(validationIssues({ errors: [{ field: 'items.2.language', reason: 'bad' }] })[0].loc).toEqual(['body', 'items', 2, 'language']);
    expect(validationIssues({ detail: 'Not found' })).toEqual([]);
    expect(validationIssues(null)).toEqual([]);
  });
});
