import { expect, shot, test } from './fixtures';

test('create a batch from JSONL and watch it finish', async ({ page }) => {
  await page.goto('/batches');
  await page.getByRole('button', { name: 'Load example' }).click();
  await expect(page.getByText('6 items ready.')).toBeVisible();
  await shot(page, 'batches');
  await page.getByRole('button', { name: 'Submit 6 items' }).click();
  await expect(page).toHaveURL(/\/batches\/[^/]+$/);
  await expect(page.getByRole('progressbar', { name: 'Batch progress' })).toBeVisible();
  await expect(page.getByTestId('batch-done')).toHaveText('6', { timeout: 60_000 });
  await expect(page.locator('h1 .badge')).toHaveText('finished');
  // 3 of the 4 judged items pass: sum, sort, arith pass; sum-off-by-one fails.
  await expect(page.getByTestId('pass-rate')).toHaveText('75%');
  const rows = page.getByRole('table', { name: 'Batch items' }).locator('tbody tr');
  await expect(rows).toHaveCount(6);
  // Failures first: the first row is not a clean pass.
  await expect(rows.first()).not.toContainText('passed');
  await shot(page, 'batch');
});
