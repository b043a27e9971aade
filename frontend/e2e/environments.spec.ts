/**
 * Environments in the browser: an admin uploads an image archive over the API (built
 * by tests/support/oci_images.py, imported by the real skopeo and umoci in a real `crucible
 * serve`); the Environments page lists it, and the Run page submits into it, which
 * the evaluation page then names.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AUTH, expect, shot, test } from './fixtures';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** A docker-save archive with (fake) python3 and bash: enough for the language lookup. */
function archive(): Buffer {
  const out = join(mkdtempSync(join(tmpdir(), 'crucible-e2e-env-')), 'image.tar');
  const script = [
    'import sys',
    "sys.path.insert(0, 'tests')",
    'from pathlib import Path',
    'from support.oci_images import Image, directory, file, layer_tar, write_docker_archive',
    "entries = [directory('usr'), directory('usr/bin')]",
    "entries += [file(f'usr/bin/{p}', '#!/bin/sh\\n', mode=0o755) for p in ('python3', 'bash')]",
    'write_docker_archive(Image([layer_tar(entries)]), Path(sys.argv[1]))',
  ].join('\n');
  execFileSync(join(repo, '.venv/bin/python'), ['-c', script, out], { cwd: repo });
  return readFileSync(out);
}

test('an uploaded environment is listed and a run can name it', async ({ page, api }) => {
  const name = `e2e/tools:${Date.now()}`;
  const upload = await page.request.post(`${api}/api/v1/environments?name=${encodeURIComponent(name)}`, {
    headers: { ...AUTH, 'Content-Type': 'application/octet-stream' },
    data: archive(),
  });
  expect(upload.status(), await upload.text()).toBe(201);
  const env = await upload.json();

  await page.goto('/');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Environments' }).click();
  await expect(page).toHaveURL(/\/environments$/);
  const row = page.getByRole('row', { name: new RegExp(name.replace(/[.:/]/g, '\\$&')) });
  await expect(row).toContainText(env.digest.replace('sha256:', '').slice(0, 12));
  await expect(row).toContainText('bash, python');
  await shot(page, 'environments');

  await page.goto('/');
  await page.getByLabel('Environment').selectOption(name);
  await page.getByRole('button', { name: 'Run' }).click();
  await expect(page).toHaveURL(/\/evaluations\/ev_[0-9a-f]+$/);
  await expect(page.getByText(`environment ${name}`)).toBeVisible();
});
