import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [react()],
  // The dev server's dependency pre-bundling would move the SDK's JavaScript away from its
  // `.wasm`, which it finds beside itself (`new URL(…, import.meta.url)`).
  optimizeDeps: { exclude: ["@presence-rs/presence"] },
});
