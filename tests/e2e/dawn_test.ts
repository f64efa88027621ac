// The server on Dawn (--webgpu dawn, engine/webgpu_backend.ts), end to end on stories260K: the published
// greedy text, and requests sharing steps giving what each gives alone, through captured and uncaptured
// steps. Dawn needs a Vulkan driver it accepts (Debian 12's lavapipe is too old): .ci/run unpacks Mesa 25's
// from bookworm-backports (.ci/dawn_driver.sh) and names its ICD file in RAGTIME_TEST_DAWN_ICD; without
// that variable this test is ignored.
import assert from "node:assert/strict";
import { post } from "../helpers/fake_engine.ts";
import { PUBLISHED_GREEDY } from "../helpers/engine.ts";
import { withServerProcess } from "../helpers/server_process.ts";

const ICD = Deno.env.get("RAGTIME_TEST_DAWN_ICD");

/** The driver's own folder goes on the library path: Mesa 25's lavapipe needs its newer libdrm beside it. */
function dawnEnv(icd: string): Record<string, string> {
  const lib = JSON.parse(Deno.readTextFileSync(icd)).ICD.library_path as string;
  const dir = lib.slice(0, lib.lastIndexOf("/"));
  const ld = Deno.env.get("LD_LIBRARY_PATH");
  return { VK_DRIVER_FILES: icd, LD_LIBRARY_PATH: ld ? `${dir}:${ld}` : dir };
}

async function complete(baseURL: string, prompt: string, maxTokens: number): Promise<string> {
  const res = await post(`${baseURL}/completions`, { prompt, max_tokens: maxTokens, temperature: 0 });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.usage.completion_tokens, maxTokens);
  return body.choices[0].text;
}

const PROMPTS = [
  "Once upon a time",
  "The little dog",
  "Tom and Sue went to the park. They saw",
  "One day, a big bird",
  "Mom said",
  "Lily had a red ball. She",
  "The sun was hot and the cat",
  "There was a tree",
];

Deno.test({
  name: "Dawn: published greedy text, and batched requests equal to each alone",
  ignore: !ICD,
}, async () => {
  await withServerProcess(
    { args: ["--webgpu", "dawn", "--max-seqs", "8"], env: dawnEnv(ICD!), readyTimeoutMs: 180_000 },
    async (s) => {
      assert.match(s.output(), /\(Dawn\)/, "the startup line names Dawn as the WebGPU in use");
      const text = "Once upon a time" + await complete(s.baseURL, "Once upon a time", 100);
      assert.ok(PUBLISHED_GREEDY.startsWith(text), `not the published text:\n${text}`);
      const alone: string[] = [];
      for (const p of PROMPTS) alone.push(await complete(s.baseURL, p, 24));
      const together = await Promise.all(PROMPTS.map((p) => complete(s.baseURL, p, 24)));
      assert.deepEqual(together, alone);
    },
  );
});
