// GET /: the chat playground, a static page (http/ui/) that talks to /v1/chat/completions. The page is
// public; the API calls it makes carry the key the user enters, so --api-key still guards inference.
import { Hono } from "hono";
import type { AppEnv } from "../context.ts";

const UI_DIR = new URL("../ui/", import.meta.url);

/** path -> [file in http/ui, content type] */
const FILES: Record<string, [string, string]> = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/ui/app.js": ["app.js", "text/javascript; charset=utf-8"],
  "/ui/style.css": ["style.css", "text/css; charset=utf-8"],
  "/favicon.svg": ["favicon.svg", "image/svg+xml"],
  // Browsers ask for /favicon.ico on their own; they render an SVG served there too.
  "/favicon.ico": ["favicon.svg", "image/svg+xml"],
};

// Same-origin only: no inline code, no third-party hosts, and the page may call nothing but this server.
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The playground's routes; the files are read once, here, so a missing file fails at startup. */
export function uiRoutes(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  for (const [path, [file, type]] of Object.entries(FILES)) {
    const body = Deno.readFileSync(new URL(file, UI_DIR));
    app.get(path, () =>
      new Response(body, {
        headers: {
          "content-type": type,
          "cache-control": "no-cache",
          "x-content-type-options": "nosniff",
          "content-security-policy": CSP,
          "referrer-policy": "no-referrer",
        },
      }));
  }
  return app;
}
