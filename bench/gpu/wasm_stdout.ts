// Captures what onnxruntime-web's wasm prints on stdout (session.endProfiling() prints its profile
// there). Under Deno the wasm glue takes its Node path and writes each line with
// require("fs").writeSync(1, ...), which it looks up at every call, so wrapping that function is enough.

import { createRequire } from "node:module";

const fs = createRequire(import.meta.url)("fs") as {
  writeSync: (fd: number, data: unknown, ...rest: unknown[]) => number;
};
const originalWrite = fs.writeSync;
let chunks: string[] | null = null;

fs.writeSync = (fd: number, data: unknown, ...rest: unknown[]) => {
  if (chunks && fd === 1 && typeof data === "string") {
    chunks.push(data);
    return data.length;
  }
  return originalWrite(fd, data, ...rest);
};

/** Runs `fn` and returns the non-empty lines the wasm wrote to stdout meanwhile. */
export async function captureWasmStdout(fn: () => unknown): Promise<string[]> {
  const got: string[] = [];
  chunks = got;
  try {
    await fn();
  } finally {
    chunks = null;
  }
  return got.join("").split("\n").filter((l) => l.length > 0);
}
