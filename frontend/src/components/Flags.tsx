import type { ScanFlag } from '../api/types';

const TEXT: Record<ScanFlag, string> = {
  process: 'spawns processes',
  network: 'uses the network',
  ffi: 'native code / FFI',
  file_write: 'writes outside /workspace',
  dynamic_code: 'runs dynamic code',
};

/** The static scan's signals, as small chips (informational: runs are never blocked). */
export function Flags({ flags }: { flags?: readonly string[] | null }) {
  if (!flags || flags.length === 0) return <span className="muted">—</span>;
  return (
    <span className="flags" aria-label={`Scan flags: ${flags.join(', ')}`}>
      {flags.map((f) => (
        <span key={f} className="chip chip-warn" title={TEXT[f as ScanFlag] ?? f} data-flag={f}>
          {f}
        </span>
      ))}
    </span>
  );
}
