/**
 * Agent sandboxes in the browser: create one, run `echo hello` from the page's box,
 * see it in the transcript (command, output, exit code), stop it.
 * Against a real `crucible serve` with the real session engine (runc).
 */
import { expect, shot, test } from './fixtures';

test('a sandbox from the UI: run a command, watch the transcript, stop it', async ({ page }) => {
  await page.goto('/sandboxes');
  await page.getByRole('button', { name: 'New sandbox' }).click();
  await expect(page).toHaveURL(/\/sandboxes\/sbx_[0-9a-f]+$/);
  const id = page.url().split('/').pop()!;
  await expect(page.getByRole('heading', { name: id })).toBeVisible();

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
});
