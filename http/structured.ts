// Structured output: response_format as a grammar the engine enforces while decoding
// (engine/grammar.ts), and the schema rewrites that keep xgrammar's output valid.
import type { GrammarSpec } from "../engine/protocol.ts";
import { badRequest } from "./errors.ts";
import type { ResponseFormat } from "./schemas.ts";

/** Integer ranges up to this many values become an enum (xgrammar 0.1.27 gets some ranges wrong). */
const MAX_ENUM_RANGE = 256;

/**
 * A copy of the schema that xgrammar enforces exactly: a bounded integer range with few values is
 * listed as an enum, since xgrammar's range rule accepts some numbers past its bounds (0..120
 * accepts 121-129).
 */
export function enforceableSchema(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(enforceableSchema);
  if (typeof schema !== "object" || schema === null) return schema;
  const s = schema as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s)) {
    // Values of these are data, not schemas.
    out[k] = k === "enum" || k === "const" || k === "default" || k === "examples" ? v : enforceableSchema(v);
  }
  if (s.type !== "integer" || "enum" in s || "const" in s) return out;
  const lo = bound(s.minimum, s.exclusiveMinimum, 1), hi = bound(s.maximum, s.exclusiveMaximum, -1);
  if (lo === null || hi === null || hi < lo || hi - lo + 1 > MAX_ENUM_RANGE) return out;
  const values: number[] = [];
  for (let v = lo; v <= hi; v++) {
    if (typeof s.multipleOf !== "number" || v % s.multipleOf === 0) values.push(v);
  }
  const { type: _t, minimum: _a, maximum: _b, exclusiveMinimum: _c, exclusiveMaximum: _d, ...rest } = out;
  return { ...rest, enum: values };
}

/** The integer bound of minimum/exclusiveMinimum (dir 1) or maximum/exclusiveMaximum (dir -1). */
function bound(inclusive: unknown, exclusive: unknown, dir: 1 | -1): number | null {
  const cands: number[] = [];
  if (typeof inclusive === "number" && Number.isFinite(inclusive)) {
    cands.push(dir === 1 ? Math.ceil(inclusive) : Math.floor(inclusive));
  }
  if (typeof exclusive === "number" && Number.isFinite(exclusive)) {
    cands.push(dir === 1 ? Math.floor(exclusive) + 1 : Math.ceil(exclusive) - 1);
  }
  if (cands.length === 0) return null;
  return dir === 1 ? Math.max(...cands) : Math.min(...cands);
}

/** The grammar of a response_format, or undefined for free text. */
export function responseFormatGrammar(rf: ResponseFormat | undefined): GrammarSpec | undefined {
  if (!rf || rf.type === "text") return undefined;
  if (rf.type === "json_object") return { param: "response_format", type: "json_object" };
  const schema = rf.json_schema.schema;
  if (schema === undefined) return { param: "response_format", type: "json_object" };
  let text: string;
  try {
    text = JSON.stringify(enforceableSchema(schema));
  } catch {
    throw badRequest("'response_format.json_schema.schema' is not a valid JSON Schema.", "response_format");
  }
  return { param: "response_format", type: "json_schema", schema: text };
}
