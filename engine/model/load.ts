// Entry point for loading a model from disk: a GGUF file or a Hugging Face folder.

import { dirname } from "node:path";
import { loadGguf } from "./gguf.ts";
import { hasGgufMagic } from "./gguf_file.ts";
import { loadHfFolder } from "./hf.ts";
import { type LoadedModel, type LoadProgress, ModelLoadError } from "./types.ts";

export interface LoadOptions {
  progress?: LoadProgress;
  maxContext?: number;
  /** Config, tokenizer and chat template only: weights are not read (the HTTP thread's view). */
  skipWeights?: boolean;
}

export async function loadModel(path: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch {
    throw new ModelLoadError(`model path not found: ${path}`, path);
  }
  if (info.isDirectory) return await loadHfFolder(path, opts);
  const lower = path.toLowerCase();
  if (lower.endsWith(".gguf")) return await loadGguf(path, opts);
  // Pointing at a file inside a Hugging Face folder means the folder.
  if (lower.endsWith(".safetensors") || lower.endsWith("config.json") || lower.endsWith(".index.json")) {
    return await loadHfFolder(dirname(path), opts);
  }
  // GGUF files without the extension, such as Ollama's blobs (models/blobs/sha256-...), by their magic.
  if (await startsWithGgufMagic(path)) return await loadGguf(path, opts);
  throw new ModelLoadError(
    `${path}: not a model (expected a GGUF file or a Hugging Face folder with config.json)`,
    path,
  );
}

async function startsWithGgufMagic(path: string): Promise<boolean> {
  try {
    using f = await Deno.open(path, { read: true });
    const head = new Uint8Array(4);
    const n = await f.read(head);
    return n === 4 && hasGgufMagic(head);
  } catch {
    return false;
  }
}
