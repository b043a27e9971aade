import { useQuery, useQueryClient } from '@tanstack/react-query';
import { NavLink, Route, Routes, Link } from 'react-router-dom';
import { getHealth, whoAmI } from './api/client';
import { signOut, useAuth } from './api/auth';
import { SignInPage } from './pages/SignInPage';
import { useTheme, type ThemeMode } from './lib/theme';
import { RunPage } from './pages/RunPage';
import { EvaluationPage } from './pages/EvaluationPage';
import { EvaluationsPage } from './pages/EvaluationsPage';
import { BatchesPage } from './pages/BatchesPage';
import { BatchPage } from './pages/BatchPage';
import { DashboardPage } from './pages/DashboardPage';
import { SandboxesPage } from './pages/SandboxesPage';
import { SandboxPage } from './pages/SandboxPage';
import { EnvironmentsPage } from './pages/EnvironmentsPage';

const NEXT_THEME: Record<ThemeMode, ThemeMode> = { system: 'light', light: 'dark', dark: 'system' };

function ThemeToggle() {
  const [mode, setMode] = useTheme();
  const icon = mode === 'light' ? '☀' : mode === 'dark' ? '☾' : '◐';
  return (
    <button
      type="button"
      className="btn btn-ghost theme-toggle"
      onClick={() => setMode(NEXT_THEME[mode])}
      aria-label={`Theme: ${mode}. Switch to ${NEXT_THEME[mode]}`}
      title={`Theme: ${mode}`}
    >
      <span aria-hidden="true">{icon}</span>
      <span className="theme-name">{mode}</span>
    </button>
  );
}

function ServerStatus() {
  const { data } = useQuery({ queryKey: ['health'], queryFn: getHealth, refetchInterval: 10_000, retry: false });
  if (!data) return null;
  const [tone, text] = !data.ok ? ['bad', 'Server unreachable'] : !data.ready ? ['warn', 'Server not ready'] : ['ok', 'Server ready'];
  return (
    <span className={`server-status server-${tone}`} role="status" title={text}>
      <span className="dot" aria-hidden="true" />
      <span className="server-status-text">{text}</span>
    </span>
  );
}

function Account() {
  const { key } = useAuth();
  const queryClient = useQueryClient();
  const { data } = useQuery({ queryKey: ['whoami', key], queryFn: () => whoAmI(), enabled: !!key, retry: false, staleTime: 60_000 });
  if (!key) return null;
  return (
    <span className="account">
      {data && (
        <span className="muted small" title={`key ${data.id}`}>
          {data.name} · {data.role}
        </span>
      )}
      <button
        type="button"
        className="btn btn-ghost"
        onClick={() => {
          signOut();
          queryClient.clear();
        }}
      >
        Sign out
      </button>
    </span>
  );
}

function NotFound() {
  return (
    <div className="page">
      <div className="state state-empty">
        <p className="state-title">Page not found</p>
        <p className="state-body">
          Nothing lives at this address. <Link to="/">Run a program</Link> or see <Link to="/evaluations">evaluations</Link>.
        </p>
      </div>
    </div>
  );
}

export function App() {
  const { key, rejected } = useAuth();
  const signedIn = !!key && !rejected;
  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <Link to="/" className="brand" aria-label="Crucible home">
          <svg viewBox="0 0 32 32" width="22" height="22" aria-hidden="true">
            <path d="M6 4h20l-3 22a3 3 0 0 1-3 2H12a3 3 0 0 1-3-2z" fill="var(--accent)" />
            <path d="M9.5 14h13l-1.6 11.5a1.5 1.5 0 0 1-1.5 1.3h-6.8a1.5 1.5 0 0 1-1.5-1.3z" fill="var(--accent-soft)" />
          </svg>
          <span>Crucible</span>
        </Link>
        <nav aria-label="Main">
          <NavLink to="/" end>
            Run
          </NavLink>
          <NavLink to="/evaluations">Evaluations</NavLink>
          <NavLink to="/batches">Batches</NavLink>
          <NavLink to="/sandboxes">Sandboxes</NavLink>
          <NavLink to="/environments">Environments</NavLink>
          <NavLink to="/dashboard">Dashboard</NavLink>
        </nav>
        <div className="topbar-end">
          <ServerStatus />
          <Account />
          <ThemeToggle />
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {!signedIn ? (
          <SignInPage rejected={rejected} />
        ) : (
        <Routes>
          <Route path="/" element={<RunPage />} />
          <Route path="/run" element={<RunPage />} />
          <Route path="/evaluations" element={<EvaluationsPage />} />
          <Route path="/evaluations/:id" element={<EvaluationPage />} />
          <Route path="/batches" element={<BatchesPage />} />
          <Route path="/batches/:id" element={<BatchPage />} />
          <Route path="/sandboxes" element={<SandboxesPage />} />
          <Route path="/sandboxes/:id" element={<SandboxPage />} />
          <Route path="/environments" element={<EnvironmentsPage />} />
          <Route path="/dashboard" element={<DashboardPage />} />
          <Route path="*" element={<NotFound />} />
        </Routes>
        )}
      </main>
    </>
  );
}
