// The chat playground's HTTP side: its files at / are public and self-contained, --no-ui removes them,
// and --api-key and --cors-origins apply to it as to any route. The browser test is tests/e2e/ui_browser_test.ts.
import assert from "node:assert/strict";
import { helpText, parseConfig } from "../../server/config.ts";
import { post, readError, withFake } from "../helpers/fake_engine.ts";

const PAGE_FILES: Array<[string, RegExp]> = [
  ["/", /^text\/html/],
  ["/ui/app.js", /^text\/javascript/],
  ["/ui/style.css", /^text\/css/],
  ["/favicon.svg", /^image\/svg\+xml/],
  ["/favicon.ico", /^image\/svg\+xml/],
];
const chatBody = { messages: [{ role: "user", content: "Hi" }], max_tokens: 2, stream: true };

Deno.test("ui: the page and its files are public while /v1 needs the key", async () => {
  await withFake({ args: ["--api-key", "k1"] }, async (s) => {
    for (const [path, type] of PAGE_FILES) {
      const res = await fetch(`${s.origin}${path}`);
      const body = await res.text();
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type") ?? "", type, path);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
      assert.ok(body.length > 100, path);
    }
    const page = await (await fetch(`${s.origin}/`)).text();
    assert.match(page, /<script src="\/ui\/app\.js" defer><\/script>/);
    assert.match(page, /id="status"/);

    const denied = await post(`${s.baseURL}/chat/completions`, chatBody);
    assert.equal((await readError(denied)).status, 401);
    const models = await fetch(`${s.baseURL}/models`);
    assert.equal((await readError(models)).status, 401);
    const ok = await post(`${s.baseURL}/chat/completions`, chatBody, { authorization: "Bearer k1" });
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /data: \[DONE\]/);
  });
});

Deno.test("ui: works offline: no file loads or calls anything but this server", async () => {
  await withFake({}, async (s) => {
    const res = await fetch(`${s.origin}/`);
    await res.body?.cancel();
    const csp = res.headers.get("content-security-policy") ?? "";
    for (const d of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'"]) {
      assert.ok(csp.includes(d), `CSP has ${d}: ${csp}`);
    }
    for (const [path] of PAGE_FILES) {
      const text = await (await fetch(`${s.origin}${path}`)).text();
      // The SVG namespace is a name, not a fetch; any other absolute URL would be a remote load.
      const urls = text.match(/(https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"')]*/gi) ?? [];
      assert.deepEqual(urls.filter((u) => u !== "http://www.w3.org/2000/svg"), [], path);
    }
  });
});

Deno.test("ui: --no-ui leaves / and the page's files unrouted; the API is unaffected", async () => {
  await withFake({ args: ["--no-ui"] }, async (s) => {
    for (const [path] of PAGE_FILES) {
      const { status, error } = await readError(await fetch(`${s.origin}${path}`));
      assert.equal(status, 404, path);
      assert.equal(error.code, "not_found");
    }
    const ok = await post(`${s.baseURL}/chat/completions`, chatBody);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
  });
});

Deno.test("ui: --no-ui, RAGTIME_NO_UI and the help text", () => {
  const env = (vars: Record<string, string>) => ({ get: (k: string) => vars[k] });
  assert.equal(parseConfig([], env({})).noUi, false);
  assert.equal(parseConfig(["--no-ui"], env({})).noUi, true);
  assert.equal(parseConfig([], env({ RAGTIME_NO_UI: "1" })).noUi, true);
  assert.equal(parseConfig(["--no-ui=false"], env({ RAGTIME_NO_UI: "1" })).noUi, false);
  assert.match(helpText(), /--no-ui +Do not serve the chat playground at \/ .*env: RAGTIME_NO_UI/);
});

Deno.test("ui: the page follows --cors-origins like every route", async () => {
  await withFake({ args: ["--cors-origins", "https://app.example.com"] }, async (s) => {
    const allowed = await fetch(`${s.origin}/`, { headers: { origin: "https://app.example.com" } });
    await allowed.body?.cancel();
    assert.equal(allowed.headers.get("access-control-allow-origin"), "https://app.example.com");
    const other = await fetch(`${s.origin}/`, { headers: { origin: "https://evil.example" } });
    await other.body?.cancel();
    assert.equal(other.headers.get("access-control-allow-origin"), null);
  });
});
