import { expect, shot, submit, test, waitDone } from './fixtures';

test('filter the evaluations list', async ({ page, api }) => {
  const tag = `e2e-${Date.now()}`;
  const ok = await submit(api, { language: 'python', code: 'print("ok")', labels: { run: tag } });
  const bad = await submit(api, { language: 'python', code: 'raise SystemExit(2)', labels: { run: tag } });
  const tle = await submit(api, { language: 'python', code: 'while True: pass', limits: { timeout_s: 1, cpu_s: 1 }, labels: { run: tag } });
  await Promise.all([ok, bad, tle].map((r) => waitDone(api, r.id)));

  await page.goto('/evaluations');
  await page.getByLabel('Label').fill(`run:${tag}`);
  await page.getByRole('button', { name: 'Apply' }).click();
  const rows = page.getByRole('table', { name: 'Evaluations' }).locator('tbody tr');
  await expect(rows).toHaveCount(3);
  await expect(page).toHaveURL(new RegExp(`label=run%3A${tag}`));

  await page.getByLabel('Termination').selectOption('timeout');
  await expect(rows).toHaveCount(1);
  await expect(rows.first()).toContainText(tle.id.slice(0, 8));

  await page.getByLabel('Termination').selectOption('');
  await page.getByLabel('Status').selectOption('completed');
  await expect(rows).toHaveCount(3);
  await shot(page, 'evaluations');

  await page.getByRole('button', { name: 'Clear' }).click();
  await expect(page.getByLabel('Label')).toHaveValue('');

  await page.goto(`/evaluations?label=run:${tag}&termination=memory_limit`);
  await expect(page.getByText('No evaluations match these filters')).toBeVisible();
});
