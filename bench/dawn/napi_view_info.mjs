// node napi_view_info.mjs | deno run -A napi_view_info.mjs   (after building napi_view_info.node)
import { createRequire } from "node:module";
import process from "node:process";
const { info } = createRequire(import.meta.url)("./napi_view_info.node");
const runtime = typeof Deno !== "undefined" ? `deno ${Deno.version.deno}` : `node ${process.version}`;
const views = {
  ArrayBuffer: new Uint8Array(new ArrayBuffer(64), 16, 32),
  SharedArrayBuffer: new Uint8Array(new SharedArrayBuffer(64), 16, 32),
  "shared WebAssembly.Memory": new Uint8Array(
    new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true }).buffer,
    16,
    32,
  ),
};
for (const [name, v] of Object.entries(views)) {
  console.log(`${runtime} Uint8Array on ${name}: ${info(v)}`);
}
