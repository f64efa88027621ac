// ragtime's dequantizers against llama.cpp's gguf-py on random blocks of every supported type
// (tests/fixtures/gguf_quants.json, written by tools/gguf_quant_fixtures.py).

import { assert, assertEquals } from "../../helpers/assert.ts";
import { DEQUANTIZABLE, dequantizeF16, dequantizeF32 } from "../../../engine/model/ggml_quants.ts";

interface Fixture {
  type: number;
  elements: number;
  blocks: string;
  values: string;
}

const fixtures: { types: Record<string, Fixture> } = JSON.parse(
  await Deno.readTextFile(new URL("../../fixtures/gguf_quants.json", import.meta.url)),
);
const b64 = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

Deno.test("gguf quants: every supported type has a gguf-py fixture", () => {
  assertEquals(Object.keys(fixtures.types).sort(), [...DEQUANTIZABLE].sort());
});

for (const [name, f] of Object.entries(fixtures.types)) {
  Deno.test(`gguf quants: ${name} dequantizes to gguf-py's values`, () => {
    const blocks = b64(f.blocks);
    const want = new Float32Array(b64(f.values).buffer);
    const got = dequantizeF32(f.type, blocks, f.elements);
    assertEquals(got.length, want.length);
    let bad = 0, first = -1;
    for (let i = 0; i < want.length; i++) {
      // ggml's float32 arithmetic, reproduced: equal up to the last bit of an fp32 rounding.
      if (Math.abs(got[i] - want[i]) > 1e-6 * Math.abs(want[i]) + 1e-9) {
        bad++;
        if (first < 0) first = i;
      }
    }
    assertEquals(bad, 0, `${name}: ${bad} values differ, first at ${first}: ${got[first]} vs ${want[first]}`);
    // The load path stores the same values rounded once to F16.
    const h = new Float16Array(dequantizeF16(f.type, blocks, f.elements).buffer);
    for (let i = 0; i < want.length; i++) assert(Object.is(h[i], Math.fround(new Float16Array([got[i]])[0])));
  });
}

Deno.test("gguf quants: a byte count that does not hold whole blocks is an error", () => {
  let msg = "";
  try {
    dequantizeF32(12, new Uint8Array(100), 256);
  } catch (e) {
    msg = (e as Error).message;
  }
  assert(msg.includes("Q4_K") && msg.includes("100 bytes"), msg);
});
