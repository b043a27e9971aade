/**
 * Agent sandboxes in the browser: create one, run `echo hello` from the page's box,
 * see it in the transcript (command, output, exit code), stop it.
 *
 * NEEDS THE REAL SESSION ENGINE (crucible.sandbox.session, issue 11 part 1). Until it
 * is merged the server answers 503 to POST /api/v1/sandboxes and this test is
 * SKIPPED, saying so; with E2E_REQUIRE_SANDBOXES=1 (set it at merge) it fails instead.
 */
import { AUTH, expect, shot, test } from './fixtures';

test('a sandbox from the UI: run a command, watch the transcript, stop it', async ({ page, api }) => {
  const probe = await fetch(`${api}/api/v1/sandboxes`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...AUTH },
    body: JSON.stringify({ ttl_s: 120 }),
  });
  if (probe.status === 503 && process.env.E2E_REQUIRE_SANDBOXES !== '1') {
    test.skip(true, `the server has no session engine yet: ${(await probe.json()).detail}`);
  }
  expect(probe.status, await probe.clone().text()).toBe(201);
  const probeId = (await probe.json()).id as string;
  await fetch(`${api}/api/v1/sandboxes/${probeId}`, { method: 'DELETE', headers: AUTH });

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
