import { useQuery } from '@tanstack/react-query';
import { listEnvironments } from '../api/client';

/** The environments a run or a sandbox can name: `host` first, then the server's. */
export function useEnvironments() {
  return useQuery({ queryKey: ['environments'], queryFn: ({ signal }) => listEnvironments(signal), staleTime: 30_000, retry: false });
}

/** A <select> of environments; the caller's <label htmlFor={id}> names it. */
export function EnvironmentSelect({
  id,
  value,
  onChange,
  language,
  ...aria
}: {
  id: string;
  value: string;
  onChange: (name: string) => void;
  /** when given, environments lacking it are marked (the server would refuse them) */
  language?: string;
  'aria-invalid'?: boolean;
  'aria-describedby'?: string;
}) {
  const { data } = useEnvironments();
  const known = data ?? [];
  const listed = known.some((e) => e.name === value) || value === 'host';
  return (
    <select id={id} value={value} onChange={(ev) => onChange(ev.target.value)} {...aria}>
      <option value="host">host (the server's own toolchain)</option>
      {known.map((e) => {
        const lacks = language !== undefined && !e.languages.includes(language);
        return (
          <option key={e.name} value={e.name}>
            {e.name} ({e.languages.join(', ') || 'no known language'}){lacks ? ` · no ${language}` : ''}
          </option>
        );
      })}
      {!listed && <option value={value}>{value} (not on this server)</option>}
    </select>
  );
}
