// `npm run build:react` (or `make playground`): served by the API server at /playground/react/.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/playground/react/',
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
  // `npm run dev:react`: Vite's dev server, with /chat passed on to `make run`'s server.
  server: { proxy: { '/chat': 'http://127.0.0.1:8000' } },
});
