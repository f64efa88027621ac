// Reads a JSON request body under a size limit: the declared length is checked first, then the
// bytes actually read, since Content-Length can be absent (chunked) or wrong. The whole body must
// arrive within a time limit, so a stalled upload cannot hold its connection and buffers forever.
import type { HttpConfig } from "./context.ts";
import { ApiError, badRequest } from "./errors.ts";
import { bytesNestDeeperThan, tooDeep } from "./json_depth.ts";

/** The client broke off its upload: it is gone, so this status is only for the log (never a 500). */
export const uploadCut = () =>
  new ApiError(499, "The client closed the connection before its request body was complete.", {
    code: "client_closed",
    headers: { connection: "close" },
  });

const bodyTimeout = (ms: number) =>
  new ApiError(408, `The request body did not arrive within ${ms / 1000} s.`, {
    code: "request_timeout",
    headers: { connection: "close" },
  });

const tooLarge = (limit: number) =>
  new ApiError(413, `Request body exceeds the limit of ${limit} bytes.`, { code: "request_too_large" });

/** Reads the body under the config's size and time limits. */
export const readRequestJson = (req: Request, config: HttpConfig): Promise<unknown> =>
  readBodyJson(req, config.maxBodyKb * 1024, config.bodyTimeoutS ? config.bodyTimeoutS * 1000 : Infinity);

export async function readBodyJson(req: Request, limit: number, timeoutMs = Infinity): Promise<unknown> {
  const declared = Number(req.headers.get("content-length"));
  if (declared > limit) {
    await req.body?.cancel().catch(() => {});
    throw tooLarge(limit);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    const timedOut = Symbol("timeout");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = Number.isFinite(timeoutMs)
      ? new Promise<typeof timedOut>((r) => timer = setTimeout(() => r(timedOut), timeoutMs))
      : null;
    try {
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array> | typeof timedOut;
        try {
          const read = reader.read();
          read.catch(() => {}); // still pending when the deadline wins
          r = deadline ? await Promise.race([read, deadline]) : await read;
        } catch {
          // Deno reports a connection closed mid-body as a read error.
          throw uploadCut();
        }
        if (r === timedOut) {
          reader.cancel().catch(() => {});
          throw bodyTimeout(timeoutMs);
        }
        if (r.done) break;
        size += r.value.byteLength;
        if (size > limit) {
          await reader.cancel().catch(() => {});
          throw tooLarge(limit);
        }
        chunks.push(r.value);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  if (bytesNestDeeperThan(bytes)) throw tooDeep();
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw badRequest("The request body is not valid JSON.", null, "invalid_json");
  }
}
