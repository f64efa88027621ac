// Nesting limits for request bodies. JSON.parse copes with 100k-deep arrays but takes about a second
// on the HTTP thread for 500k, and recursive walks over the result overflow the stack.
import { badRequest } from "./errors.ts";

/** Deepest nesting a request body may have; OpenAI bodies need 4 (messages[i].content[j].text). */
export const MAX_JSON_DEPTH = 32;

export const tooDeep = () =>
  badRequest(
    `The request body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels.`,
    null,
    "invalid_body",
  );

const QUOTE = 0x22,
  BACKSLASH = 0x5c,
  OPEN_ARRAY = 0x5b,
  CLOSE_ARRAY = 0x5d,
  OPEN_OBJECT = 0x7b,
  CLOSE_OBJECT = 0x7d;

/** Whether raw JSON text opens more than `max` arrays or objects at once (brackets in strings aside). */
export function bytesNestDeeperThan(bytes: Uint8Array, max = MAX_JSON_DEPTH): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (inString) {
      if (b === BACKSLASH) i++;
      else if (b === QUOTE) inString = false;
    } else if (b === QUOTE) inString = true;
    else if (b === OPEN_ARRAY || b === OPEN_OBJECT) {
      if (++depth > max) return true;
    } else if (b === CLOSE_ARRAY || b === CLOSE_OBJECT) depth--;
  }
  return false;
}

/** The same for a parsed value; iterative, stops at the first value that is too deep. */
export function nestsDeeperThan(v: unknown, max = MAX_JSON_DEPTH): boolean {
  const stack: Array<[unknown, number]> = [[v, 1]];
  while (stack.length > 0) {
    const [x, depth] = stack.pop()!;
    if (depth > max) return true;
    for (const child of Array.isArray(x) ? x : Object.values(x as object)) {
      if (typeof child === "object" && child !== null) stack.push([child, depth + 1]);
    }
  }
  return false;
}
