// Reading the JSON files of a model folder with errors that name the file.

import { ModelLoadError } from "./types.ts";

export type Json = Record<string, unknown>;

/** A JSON object file: its text (for hashing) and value; null when optional and absent. */
export async function readJsonFile(path: string, required: true): Promise<{ text: string; json: Json }>;
export async function readJsonFile(
  path: string,
  required: false,
): Promise<{ text: string; json: Json } | null>;
export async function readJsonFile(
  path: string,
  required: boolean,
): Promise<{ text: string; json: Json } | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!required && e instanceof Deno.errors.NotFound) return null;
    throw new ModelLoadError(`${path}: cannot read (${(e as Error).message})`, path);
  }
  try {
    const json = JSON.parse(text);
    if (!json || typeof json !== "object" || Array.isArray(json)) throw new Error("not a JSON object");
    return { text, json };
  } catch (e) {
    throw new ModelLoadError(`${path}: invalid JSON (${(e as Error).message})`, path);
  }
}
