// `npm run build:ai-sdk` (or `make playground`): served by the API server at /playground/ai-sdk/.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/playground/ai-sdk/',
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
  // `npm run dev:ai-sdk`: Vite's dev server, with the API passed on to `make run`'s server.
  server: { proxy: { '/api/chat': 'http://127.0.0.1:8000', '/chat': 'http://127.0.0.1:8000' } },
});
