// Reads a JSON request body under a size limit: the declared length is checked first, then the
// bytes actually read, since Content-Length can be absent (chunked) or wrong.
import { ApiError, badRequest } from "./errors.ts";
import { bytesNestDeeperThan, tooDeep } from "./json_depth.ts";

const tooLarge = (limit: number) =>
  new ApiError(413, `Request body exceeds the limit of ${limit} bytes.`, { code: "request_too_large" });

export async function readJson(req: Request, limit: number): Promise<unknown> {
  const declared = Number(req.headers.get("content-length"));
  if (declared > limit) {
    await req.body?.cancel().catch(() => {});
    throw tooLarge(limit);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        throw tooLarge(limit);
      }
      chunks.push(value);
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
