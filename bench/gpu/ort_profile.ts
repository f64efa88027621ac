// Reading onnxruntime-web's WebGPU profile (session option enableProfiling): with it every program
// gets its own compute pass with timestamp queries, and session.endProfiling() prints the events as
// JSON lines on the wasm's stdout. Shared by op_profile.ts and matmul_probe.ts.

import type * as ort from "onnxruntime-web/webgpu";
import { captureWasmStdout } from "./wasm_stdout.ts";

export interface ProfileEvent {
  cat: string;
  name: string;
  dur: number;
  ts: number;
  args?: Record<string, unknown>;
}

/** The JSON events that endProfiling prints, one per line between "[" and "]". */
export function parseProfile(lines: string[]): ProfileEvent[] {
  const text = lines.join("\n");
  const start = text.indexOf("[");
  const end = text.lastIndexOf("]");
  if (start < 0 || end < start) return [];
  return JSON.parse(text.slice(start, end + 1)) as ProfileEvent[];
}

export async function endProfiling(s: ort.InferenceSession): Promise<ProfileEvent[]> {
  return parseProfile(await captureWasmStdout(() => s.endProfiling()));
}

/** GPU program events ("node&OpType&Program"): category Api, names with "&". */
export function gpuEvents(events: ProfileEvent[]): ProfileEvent[] {
  return events.filter((e) => e.cat === "Api" && e.name.includes("&"));
}

/**
 * GPU program events split into runs: each run starts at the graph's first program (by default its
 * full name; key = node name when the first node's program may differ from run to run).
 */
export function splitRuns(gpu: ProfileEvent[], key = (e: ProfileEvent) => e.name): ProfileEvent[][] {
  if (!gpu.length) return [];
  const first = key(gpu[0]);
  const runs: ProfileEvent[][] = [];
  for (let i = 0; i < gpu.length; i++) {
    if (key(gpu[i]) === first && (i === 0 || key(gpu[i - 1]) !== first)) runs.push([]);
    runs[runs.length - 1].push(gpu[i]);
  }
  return runs;
}
