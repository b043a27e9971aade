import { TEMPLATES } from '../src/lib/templates';
import { AUTH, expect, shot, test } from './fixtures';

// "Long-running with progress" runs to its end in live.spec.ts, with these same checks
// and more; running its 10 seconds here as well would only repeat them.
const RUN_IN_LIVE_SPEC = new Set(['progress']);

test.describe('templates', () => {
  for (const t of TEMPLATES.filter((t) => !RUN_IN_LIVE_SPEC.has(t.id))) {
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
      const stdout = page.getByRole('log', { name: 'stdout output' });
      switch (t.id) {
        case 'hello':
          await expect(verdict).toContainText('Passed');
          break;
        case 'fork-bomb':
          await expect(stdout).toContainText('fork refused');
          await expect(page.getByText(/Process creation was refused \d+ times? at the 32-process limit/)).toBeVisible();
          break;
        case 'network':
          await expect(stdout).toContainText('network blocked');
          break;
        case 'escape':
          await expect(stdout).toContainText('refused: /etc/passwd');
          await expect(stdout).not.toContainText('WROTE');
          await expect(page.getByRole('link', { name: 'result.txt' })).toHaveAttribute('href', /\/files\/result\.txt$/);
          {
            const href = await page.getByRole('link', { name: 'result.txt' }).getAttribute('href');
            const file = await page.request.get(href!, { headers: AUTH });
            expect(await file.text()).toBe('kept inside the sandbox\n');
          }
          break;
        case 'memory-bomb':
          await expect(page.getByText(/out-of-memory killer/)).toBeVisible();
          break;
        case 'syntax-error':
          await expect(page.getByRole('log', { name: 'stderr output' })).toContainText('error');
          break;
      }
    });
  }
});
