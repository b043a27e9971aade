import { test as base, expect, type Page } from '@playwright/test';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = resolve(here, '../test-artifacts');
export const DOCS_SHOTS = resolve(here, '../../docs/screenshots');

/** The README's screenshots are refreshed only on purpose (`make screenshots` sets this):
 * a test run must leave the work tree as it found it. */
const REFRESH_DOCS = process.env.E2E_DOCS_SCREENSHOTS === '1';

/** Saves a full-page screenshot to test-artifacts/NAME.png; a `docs` one also to
 * docs/screenshots when the run refreshes them (REFRESH_DOCS). */
export async function shot(page: Page, name: string, opts: { docs?: boolean } = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, animations: 'disabled' });
  if (opts.docs && REFRESH_DOCS) {
    mkdirSync(DOCS_SHOTS, { recursive: true });
    copyFileSync(file, join(DOCS_SHOTS, `${name}.png`));
  }
}

/** The admin key the server was started with (global-setup.ts). */
export const API_KEY = process.env.E2E_API_KEY ?? '';
export const AUTH = { Authorization: `Bearer ${API_KEY}` };

interface Fixtures {
  api: string;
  /** start the page signed in (default); false: a browser that never signed in */
  signedIn: boolean;
  /** console errors the test expects (substrings); others fail the test */
  allowConsole: string[];
}

export const test = base.extend<Fixtures>({
  baseURL: async ({}, use) => {
    await use(process.env.E2E_BASE_URL);
  },
  api: async ({}, use) => {
    await use(process.env.E2E_API_URL ?? process.env.E2E_BASE_URL ?? '');
  },
  allowConsole: [[], { option: true }],
  signedIn: [true, { option: true }],
  page: async ({ page, allowConsole, signedIn }, use) => {
    if (signedIn) {
      await page.addInitScript((key) => {
        if (!localStorage.getItem('crucible.apiKey')) localStorage.setItem('crucible.apiKey', key);
      }, API_KEY);
    }
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' && !allowConsole.some((a) => m.text().includes(a))) problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    await use(page);
    expect(problems, 'no errors in the browser console').toEqual([]);
  },
});

export { expect };

/** Submits a request straight to the API and returns the record. */
export async function submit(api: string, body: Record<string, unknown>): Promise<{ id: string; status: string }> {
  const res = await fetch(`${api}/api/v1/evaluations`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...AUTH },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
  return res.json();
}

export async function waitDone(api: string, id: string, ms = 60_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const rec = await (await fetch(`${api}/api/v1/evaluations/${id}`, { headers: AUTH })).json();
    if (!['queued', 'running'].includes(rec.status)) return rec;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`evaluation ${id} did not finish`);
}
