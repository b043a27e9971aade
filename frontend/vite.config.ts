/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The API lives under /api/v1 on the same origin in production (the server serves
// dist/ at /). In development, Vite proxies the API, health checks and SSE streams
// to a local `crucible serve`.
const backend = process.env.CRUCIBLE_API_URL ?? 'http://127.0.0.1:8000';
const proxy = {
  '/api': { target: backend, changeOrigin: false },
  '/healthz': { target: backend },
  '/readyz': { target: backend },
};

export default defineConfig({
  base: '/',
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
  build: {
    outDir: 'dist',
    sourcemap: true,
    chunkSizeWarningLimit: 900,
    rollupOptions: {
      output: {
        manualChunks: {
          codemirror: [
            'codemirror',
            '@codemirror/state',
            '@codemirror/view',
            '@codemirror/language',
            '@codemirror/commands',
            '@codemirror/lang-python',
            '@codemirror/lang-javascript',
            '@codemirror/lang-cpp',
            '@codemirror/lang-java',
            '@codemirror/legacy-modes/mode/shell',
            '@codemirror/legacy-modes/mode/clike',
          ],
          react: ['react', 'react-dom', 'react-dom/client', 'react-router-dom', '@tanstack/react-query'],
        },
      },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    setupFiles: ['src/test-setup.ts'],
    css: false,
    // The bounds catch a hung test, not a slow one: a page's first render transforms and
    // imports its modules (CodeMirror is a few MB) inside the test, and with every core
    // busy that alone took 6.6 s against Vitest's default of 5 s (a fresh-clone run at
    // load average 10). No test here measures time.
    testTimeout: 30_000,
  },
});
