import { templateById } from '../src/lib/templates';
import { expect, shot, test } from './fixtures';

// Also the "Long-running with progress" template's own test (templates.spec.ts leaves
// it to this one): the same selection, verdict and final status checks.
test('live output arrives before the program ends', async ({ page }) => {
  const t = templateById('progress')!;
  await page.goto('/');
  await page.getByLabel('Template').selectOption(t.id);
  await expect(page.getByLabel('Language')).toHaveValue(t.language);
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await expect(page).toHaveURL(/\/evaluations\/[^/]+$/);
  const stdout = page.getByRole('log', { name: 'stdout output' });
  await expect(stdout).toContainText('step 2/20');
  // Still running: the last line has not been printed and the status says so.
  await expect(page.locator('h1 .badge')).toHaveText('running');
  await expect(stdout).not.toContainText('done');
  await expect(page.getByRole('button', { name: 'Pause stdout auto-scroll' })).toBeVisible();
  await shot(page, 'evaluation-live');
  await expect(stdout).toContainText('step 20/20', { timeout: 30_000 });
  await expect(page.getByTestId('verdict')).toContainText('Exited with code 0', { timeout: 20_000 });
  await expect(page.getByTestId('verdict').locator('.badge').first()).toHaveText(new RegExp(`^(${t.expect})$`));
  await expect(page.locator('h1 .badge')).toHaveText(/completed|cancelled|error/);
});

test('cancel a running program', async ({ page }) => {
  await page.goto('/');
  await page.getByLabel('Template').selectOption('progress');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await expect(page.getByRole('log', { name: 'stdout output' })).toContainText('step 1/20');
  await page.getByRole('button', { name: 'Cancel' }).click();
  await expect(page.locator('h1 .badge')).toHaveText('cancelled');
  await expect(page.getByTestId('verdict')).toContainText('Cancelled before it finished');
  await expect(page.getByRole('button', { name: 'Cancel' })).toHaveCount(0);
  await expect(page.getByRole('log', { name: 'stdout output' })).not.toContainText('step 20/20');
});
