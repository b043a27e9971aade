import { expect, shot, submit, test, waitDone } from './fixtures';

test('dashboard shows the queue, throughput and how runs ended', async ({ page, api }) => {
  const r = await submit(api, { language: 'bash', code: 'echo hi' });
  await waitDone(api, r.id);
  await page.goto('/dashboard');
  await expect(page.getByTestId('running')).toBeVisible();
  await expect(page.getByRole('img', { name: /Throughput: \d+ evaluations finished/ })).toBeVisible();
  await expect(page.getByRole('heading', { name: 'How runs ended (last hour)' })).toBeVisible();
  await expect(page.getByRole('link', { name: 'exited' })).toBeVisible();
  // The single-node server heartbeats like any worker: it lists itself, alive.
  const workers = page.getByRole('table', { name: 'Workers' });
  await expect(workers).toContainText('embedded');
  await expect(workers).toContainText('alive');
  await shot(page, 'dashboard', { docs: true });
});

test.describe('not found states', () => {
  test.use({ allowConsole: ['404'] });
  test('unknown evaluation and unknown page', async ({ page }) => {
    await page.goto('/evaluations/ev_does_not_exist');
    await expect(page.getByText('Not found')).toBeVisible();
    await shot(page, 'evaluation-not-found');
    await page.goto('/no/such/page');
    await expect(page.getByText('Page not found')).toBeVisible();
    await shot(page, 'page-not-found');
  });
});

test('re-run with edits prefills the Run page; copy as CLI', async ({ page, api }) => {
  const r = await submit(api, { language: 'bash', code: 'echo prefill-me', limits: { memory_mb: 96 }, labels: { who: 'e2e' } });
  await waitDone(api, r.id);
  await page.goto(`/evaluations/${r.id}`);
  await expect(page.getByTestId('verdict')).toContainText('Exited with code 0');
  await page.getByText('Show commands').click();
  await expect(page.locator('.commands')).toContainText('crucible submit main.sh --language bash');
  await page.getByRole('button', { name: 'Re-run with edits' }).click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByLabel('Language')).toHaveValue('bash');
  await expect(page.getByLabel('Memory (MB)')).toHaveValue('96');
  await expect(page.getByLabel('Label 1 value')).toHaveValue('e2e');
  await expect(page.locator('.cm-content')).toContainText('echo prefill-me');
});

test('keyboard: Ctrl+Enter in the editor runs the program', async ({ page }) => {
  await page.goto('/');
  await page.getByLabel('Template').selectOption('hello');
  await page.locator('.cm-content').click();
  await page.keyboard.press('Control+Enter');
  await expect(page).toHaveURL(/\/evaluations\//);
  await expect(page.getByTestId('verdict')).toContainText('Exited with code 0');
});

test('phone width and dark theme', async ({ page, api }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto('/');
  await expect(page.getByRole('button', { name: 'Run', exact: true })).toBeVisible();
  await shot(page, 'run-phone');
  const r = await submit(api, { language: 'c', code: '#include <stdio.h>\nint main(void){int *p=0; return *p;}' });
  await waitDone(api, r.id);
  await page.setViewportSize({ width: 1366, height: 900 });
  await page.goto(`/evaluations/${r.id}`);
  await page.getByRole('button', { name: /^Theme: system/ }).click(); // → light
  await page.getByRole('button', { name: /^Theme: light/ }).click(); // → dark
  await expect(page.locator('html')).toHaveAttribute('data-theme', 'dark');
  await expect(page.getByTestId('verdict')).toContainText('Killed by SIGSEGV (segmentation fault)');
  await shot(page, 'evaluation-dark');
});
