// The chat playground in a real browser: Debian's chromium driven by playwright-core (over a pipe, so a
// dead test leaves no browser behind), against the real server on stories260K with --api-key. It checks
// the 401 message, a streamed reply with its stats, a second turn that carries the conversation, and a
// stop mid-stream after which the server runs nothing. It writes a screenshot (docs/img/playground.png
// with RAGTIME_UPDATE_SCREENSHOT=1).
import assert from "node:assert/strict";
import { type Browser, chromium, type Page } from "playwright-core";
import { type ServerProcess, withServerProcess } from "../helpers/server_process.ts";

const CHROMIUM = Deno.env.get("RAGTIME_CHROMIUM") ?? "/usr/bin/chromium";
// The README's picture is rewritten only on request (RAGTIME_UPDATE_SCREENSHOT=1), so a test run leaves the
// tracked file alone; otherwise the screenshot goes to a temporary folder.
const SCREENSHOT = Deno.env.get("RAGTIME_UPDATE_SCREENSHOT") === "1"
  ? new URL("../../docs/img/playground.png", import.meta.url).pathname
  : `${Deno.makeTempDirSync({ prefix: "ragtime-ui-" })}/playground.png`;
const KEY = "playground-test-key";
const PROMPT = "Once upon a time";
/** Generous: the software adapter on a busy 2-core machine decodes about 15 tokens/s. */
const WAIT_MS = 90_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function chromiumOrFail(): string {
  try {
    Deno.statSync(CHROMIUM);
    return CHROMIUM;
  } catch {
    throw new Error(
      `no Chromium at ${CHROMIUM}: install Debian's package 'chromium' ` +
        `(apt-get install -y --no-install-recommends chromium; bash .ci/run does) ` +
        `or set RAGTIME_CHROMIUM to a Chromium binary`,
    );
  }
}

async function running(s: ServerProcess): Promise<number> {
  const text = await (await fetch(`${s.origin}/metrics`)).text();
  const m = /^ragtime_requests_running (\S+)$/m.exec(text);
  assert.ok(m, "ragtime_requests_running in /metrics");
  return Number(m[1]);
}

async function waitForRunning(s: ServerProcess, want: (n: number) => boolean, what: string) {
  const t0 = performance.now();
  let n = await running(s);
  while (!want(n)) {
    if (performance.now() - t0 > WAIT_MS) throw new Error(`running stayed ${n}, wanted ${what}`);
    await sleep(50);
    n = await running(s);
  }
  return n;
}

const text = (page: Page, sel: string) => page.locator(sel).innerText();

async function waitForStatus(page: Page, statuses: string[]) {
  await page.waitForFunction(
    (want) => want.includes(document.getElementById("status")?.textContent ?? ""),
    statuses,
    { timeout: WAIT_MS },
  );
  return await text(page, "#status");
}

/** Sets a field as a user would, so the page's change handlers run. */
async function setField(page: Page, id: string, value: string) {
  await page.fill(`#${id}`, value);
  await page.dispatchEvent(`#${id}`, "change");
}

Deno.test("ui: the playground in Chromium against the real server with --api-key", async () => {
  const executablePath = chromiumOrFail();
  await withServerProcess({ args: ["--api-key", KEY, "--max-seqs", "4"] }, async (s) => {
    let browser: Browser | undefined;
    try {
      browser = await chromium.launch({ executablePath });
      const page = await browser.newPage({ viewport: { width: 1000, height: 620 } });
      const pageErrors: string[] = [];
      page.on("pageerror", (e) => pageErrors.push(e.message));

      // The page is public: it loads without the key, and says the API needs one.
      const res = await page.goto(`${s.origin}/`);
      assert.equal(res?.status(), 200);
      assert.equal(await page.title(), "ragtime playground");
      assert.equal(await text(page, "#status"), "idle");
      await page.waitForFunction(() => document.getElementById("model")?.textContent === "(API key needed)");

      // Without the key: a clear message, and the turn is undone so it can be sent again.
      await page.fill("#input", PROMPT);
      await page.click("#send");
      assert.equal(await waitForStatus(page, ["error", "done", "stopped"]), "error");
      const error = await text(page, "#error");
      assert.match(error, /needs an API key: enter it in the API key field.*401/);
      assert.equal(await page.locator(".msg").count(), 0);
      assert.equal(await page.inputValue("#input"), PROMPT);

      // With the key (kept in localStorage): a reply streams in, with TTFT and tokens/s.
      await setField(page, "api_key", KEY);
      await page.waitForFunction(() => document.getElementById("model")?.textContent === "stories260K");
      await setField(page, "temperature", "0");
      await setField(page, "max_tokens", "48");
      await setField(page, "system", "");
      const first = page.waitForRequest("**/v1/chat/completions");
      await page.click("#send");
      const sent = (await first).postDataJSON();
      assert.deepEqual(sent.messages, [{ role: "user", content: PROMPT }]);
      assert.equal(sent.stream, true);
      assert.equal(sent.temperature, 0);
      assert.equal(sent.max_tokens, 48);
      assert.equal(
        await waitForStatus(page, ["done", "error", "stopped"]),
        "done",
        await text(page, "#error"),
      );
      const tokens = Number(await text(page, "#tokens"));
      assert.ok(tokens > 0 && tokens <= 48, `tokens ${tokens}`);
      assert.match(await text(page, "#ttft"), /^\d+ ms$/);
      assert.match(await text(page, "#tps"), /^\d+(\.\d)?$/);
      const reply = await page.locator(".msg.assistant").first().evaluate((e) =>
        e.firstChild?.textContent ?? ""
      );
      assert.ok(reply.trim().length > 0, "the reply has text");
      assert.equal(
        await page.evaluate(() =>
          localStorage.getItem("ragtime.playground")?.includes("playground-test-key")
        ),
        true,
      );
      assert.equal(await running(s), 0);

      await Deno.mkdir(new URL("../../docs/img/", import.meta.url), { recursive: true });
      const png = await page.screenshot({ path: SCREENSHOT });
      assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], "a PNG");

      // Second turn: the conversation goes along; stop it after the first token, mid-stream.
      await setField(page, "temperature", "0.8");
      await setField(page, "max_tokens", "300");
      await page.fill("#input", "Tell me more.");
      const second = page.waitForRequest("**/v1/chat/completions");
      await page.click("#send");
      const roles = (await second).postDataJSON().messages.map((m: { role: string }) => m.role);
      assert.deepEqual(roles, ["user", "assistant", "user"]);
      await page.waitForFunction(
        () => Number(document.getElementById("tokens")?.textContent) > 0,
        undefined,
        {
          timeout: WAIT_MS,
        },
      );
      await waitForRunning(s, (n) => n === 1, "1 before stop");
      assert.equal(await page.isEnabled("#stop"), true);
      await page.click("#stop");
      assert.equal(await waitForStatus(page, ["stopped", "done", "error"]), "stopped");
      const streamed = Number(await text(page, "#tokens"));
      assert.ok(streamed > 0 && streamed < 300, `stopped after ${streamed} tokens`);
      await waitForRunning(s, (n) => n === 0, "0 after stop");
      assert.equal(await page.isEnabled("#send"), true);
      assert.deepEqual(pageErrors, []);
    } finally {
      await browser?.close();
    }
  });
});
