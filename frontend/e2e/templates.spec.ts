import { TEMPLATES } from '../src/lib/templates';
import { expect, shot, test } from './fixtures';

test.describe('templates', () => {
  for (const t of TEMPLATES) {
    test(`template "${t.name}" shows its verdict`, async ({ page }) => {
      await page.goto('/');
      await page.getByLabel('Template').selectOption(t.id);
      await expect(page.getByLabel('Language')).toHaveValue(t.language);
      if (t.id === 'hello') await shot(page, 'run', { docs: true });
      await page.getByRole('button', { name: 'Run', exact: true }).click();
      await expect(page).toHaveURL(/\/evaluations\/[^/]+$/);
      const verdict = page.getByTestId('verdict');
      await expect(verdict.locator('.badge').first()).toHaveText(new RegExp(`^(${t.expect})$`), { timeout: 60_000 });
      await expect(page.locator('h1 .badge')).toHaveText(/completed|cancelled|error/);
      if (t.id === 'memory-bomb') await shot(page, 'evaluation', { docs: true });
      if (t.id === 'hello') await expect(verdict).toContainText('Passed');
    });
  }
});
