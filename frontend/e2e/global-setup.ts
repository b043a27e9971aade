/**
 * Starts a real `crucible serve` on a free port with throwaway data and state dirs.
 * If the server serves the built frontend at /, the tests use it directly; otherwise
 * (static serving not there yet) a Vite preview server serves dist/ and proxies the
 * API to it. E2E_BASE_URL set from outside skips all of this.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const frontend = resolve(here, '..');
const repo = resolve(frontend, '..');

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

async function waitFor(url: string, ms: number, proc: ChildProcess, what: string): Promise<Response> {
  const deadline = Date.now() + ms;
  let last = '';
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}; see test-artifacts/${what}.log`);
    try {
      const res = await fetch(url);
      if (res.ok) return res;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} not ready at ${url} after ${ms} ms (${last})`);
}

function start(cmd: string, args: string[], env: NodeJS.ProcessEnv, log: string, cwd: string): ChildProcess {
  const out = openSync(log, 'w');
  return spawn(cmd, args, { cwd, env, stdio: ['ignore', out, out], detached: true });
}

/** SIGTERM to the process group; resolves once the process has exited (at most `ms`). */
function stop(p: ChildProcess | undefined, ms = 15_000): Promise<void> {
  if (!p || p.pid === undefined || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((res) => {
    const timer = setTimeout(res, ms);
    p.once('exit', () => {
      clearTimeout(timer);
      res();
    });
  });
  try {
    process.kill(-p.pid, 'SIGTERM');
  } catch {
    /* already gone */
  }
  return exited;
}

export default async function globalSetup() {
  const artifacts = join(frontend, 'test-artifacts');
  mkdirSync(artifacts, { recursive: true });
  if (process.env.E2E_BASE_URL) return;

  const work = mkdtempSync(join(tmpdir(), 'crucible-e2e-'));
  // Agent sandboxes run runc's init as an unprivileged host uid (a user namespace):
  // the directories above their state directory must be searchable by others.
  chmodSync(work, 0o711);
  mkdirSync(join(work, 'state'), { recursive: true });
  const apiPort = await freePort();
  // The server makes sure this admin key exists; the tests' browser pages start
  // signed in with it (fixtures.ts), and API calls from the tests send it.
  const key = process.env.E2E_API_KEY ?? `crk_e2e${randomBytes(24).toString('base64url')}`;
  process.env.E2E_API_KEY = key;
  const bin = process.env.CRUCIBLE_BIN ?? join(repo, '.venv/bin/crucible');
  const server = start(
    bin,
    ['serve', '--host', '127.0.0.1', '--port', String(apiPort)],
    { ...process.env, CRUCIBLE_DATA_DIR: work, CRUCIBLE_STATE_DIR: join(work, 'state'), CRUCIBLE_BOOTSTRAP_ADMIN_KEY: key },
    join(artifacts, 'server.log'),
    work,
  );
  const api = `http://127.0.0.1:${apiPort}`;
  let preview: ChildProcess | undefined;
  const teardown = async () => {
    // The server's files go only once it has exited (not after a fixed pause).
    await Promise.all([stop(preview), stop(server)]);
    rmSync(work, { recursive: true, force: true });
  };
  try {
    await waitFor(`${api}/readyz`, 60_000, server, 'server');
    let base = api;
    const root = await fetch(`${api}/`).then((r) => (r.ok ? r.text() : ''), () => '');
    if (!root.includes('id="root"')) {
      // The server does not serve the frontend (yet): serve dist/ with Vite's preview.
      if (!existsSync(join(frontend, 'dist/index.html'))) throw new Error('frontend/dist is missing: run `npm run build` first');
      const webPort = await freePort();
      preview = start(
        process.execPath,
        [join(frontend, 'node_modules/vite/bin/vite.js'), 'preview', '--host', '127.0.0.1', '--port', String(webPort), '--strictPort'],
        { ...process.env, CRUCIBLE_API_URL: api },
        join(artifacts, 'preview.log'),
        frontend,
      );
      base = `http://127.0.0.1:${webPort}`;
      await waitFor(`${base}/`, 30_000, preview, 'preview');
      process.env.E2E_SERVING = 'vite-preview';
    } else {
      process.env.E2E_SERVING = 'crucible';
    }
    process.env.E2E_BASE_URL = base;
    process.env.E2E_API_URL = api;
    console.log(`e2e: API ${api}; UI ${base} (${process.env.E2E_SERVING})`);
  } catch (err) {
    await teardown();
    throw err;
  }
  return teardown;
}
