import { describe, expect, it } from 'vitest';
import { hostLabel } from './format';

describe('hostLabel', () => {
  it('shortens a worker id to host:pid, and leaves anything else whole', () => {
    expect(hostLabel('worker@node-7.example:4242:a1b2c3')).toBe('node-7.example:4242');
    expect(hostLabel('embedded@box:9:ff00ff')).toBe('box:9');
    expect(hostLabel('something-else')).toBe('something-else');
    expect(hostLabel(null)).toBe('—');
  });
});
