import { API_KEY, expect, shot, submit, test } from './fixtures';

test.describe('signed out', () => {
  test.use({ signedIn: false, allowConsole: ['401'] });

  test('asks for a key, refuses a wrong one, then signs in', async ({ page }) => {
    await page.goto('/evaluations');
    await expect(page.getByRole('heading', { name: 'Sign in' })).toBeVisible();
    await page.locator('#api-key').fill('crk_wrong');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect(page.getByRole('alert')).toContainText('not valid');
    await shot(page, 'sign-in');
    await page.locator('#api-key').fill(API_KEY);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect(page.getByRole('heading', { name: 'Evaluations' })).toBeVisible();
    await expect(page.getByText('bootstrap · admin')).toBeVisible();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await expect(page.getByRole('heading', { name: 'Sign in' })).toBeVisible();
    expect(await page.evaluate(() => localStorage.getItem('crucible.apiKey'))).toBeNull();
  });

  test('a sign-in link stores the key and leaves the address bar', async ({ page }) => {
    await page.goto(`/dashboard#key=${encodeURIComponent(API_KEY)}`);
    await expect(page.getByRole('heading', { name: 'Dashboard' })).toBeVisible();
    expect(page.url()).not.toContain('key=');
    expect(page.url()).toMatch(/\/dashboard$/);
    expect(await page.evaluate(() => localStorage.getItem('crucible.apiKey'))).toBe(API_KEY);
  });
});

test('scan flags show on the list and the evaluation page', async ({ page, api }) => {
  const rec = await submit(api, { language: 'python', code: 'import socket\nprint(1)\n' });
  await page.goto(`/evaluations?flag=network`);
  // Only flagged evaluations are listed; the newest first.
  await expect(page.locator('tbody tr').first().locator('[data-flag="network"]')).toBeVisible();
  await page.goto(`/evaluations/${rec.id}`);
  await expect(page.getByTestId('scan-flags')).toContainText('network');
});
