/**
 * Agent sandboxes in the browser: create one, run `echo hello` from the page's box,
 * see it in the transcript (command, output, exit code), stop it; its host (the
 * server itself, embedded) on its page and in the list, and the Dashboard's worker
 * row counting it among the sandboxes it hosts.
 * Against a real `crucible serve` with the real session engine (runc).
 */
import { AUTH, expect, shot, test } from './fixtures';

test('a sandbox from the UI: run a command, watch the transcript, stop it', async ({ page, api }) => {
  await page.goto('/sandboxes');
  await page.getByRole('button', { name: 'New sandbox' }).click();
  await expect(page).toHaveURL(/\/sandboxes\/sbx_[0-9a-f]+$/);
  const id = page.url().split('/').pop()!;
  await expect(page.getByRole('heading', { name: id })).toBeVisible();
  // Its host: the id of the worker record (the embedded server's own) that hosts it.
  const rec = await (await fetch(`${api}/api/v1/sandboxes/${id}`, { headers: AUTH })).json();
  expect(rec.worker_id).toMatch(/^embedded@/);
  await expect(page.getByText(rec.worker_id, { exact: true })).toBeVisible();
  // The Dashboard counts it: within one heartbeat (2 s by default) and one refetch of
  // the workers (5 s), so 20 s is generous on a loaded machine.
  await page.goto('/dashboard');
  const worker = page.getByRole('row', { name: `Worker ${rec.worker_id}` });
  await expect(worker.getByTestId('worker-sandboxes')).not.toHaveText('—', { timeout: 20_000 });
  await page.goto(`/sandboxes/${id}`);

  await page.getByLabel('Run a command (bash -lc)').fill('echo hello');
  await page.getByRole('button', { name: 'Run' }).click();
  const entry = page.getByRole('listitem', { name: 'Command 1' });
  await expect(entry).toContainText("bash -lc 'echo hello'");
  await expect(entry.getByRole('log', { name: 'stdout of command 1' })).toHaveText('hello');
  await expect(entry).toContainText('exit 0');
  await shot(page, 'sandbox');

  await page.getByRole('button', { name: 'Stop' }).click();
  await expect(page.getByText(/This sandbox is stopped: stopped on request/)).toBeVisible();
  await expect(page.getByLabel('Run a command (bash -lc)')).toHaveCount(0);
  // The transcript stays, and the list shows it stopped.
  await expect(entry).toContainText('exit 0');
  await page.goto('/sandboxes');
  const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: `Sandbox ${id}` }) });
  await expect(row).toContainText('stopped');
  await expect(row.getByTitle(rec.worker_id)).toBeVisible();
});
