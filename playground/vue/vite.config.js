// `npm run build:vue` (or `make playground`): served by the API server at /playground/vue/.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import vue from '@vitejs/plugin-vue';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/playground/vue/',
  plugins: [vue()],
  define: { __VUE_OPTIONS_API__: 'false' }, // the component uses <script setup> only: a smaller bundle
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022' },
  // `npm run dev:vue`: Vite's dev server, with /chat passed on to `make run`'s server.
  server: { proxy: { '/chat': 'http://127.0.0.1:8000' } },
});
