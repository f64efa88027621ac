// Cross-cutting middleware: request ids and log lines, CORS, bearer-token auth.
import type { MiddlewareHandler } from "hono";
import { ApiError } from "./errors.ts";
import type { AppEnv, RequestLog } from "./context.ts";

/** Ids from clients end up in logs and headers: keep them short and free of odd characters. */
const sanitizeId = (id: string | undefined) => (id ?? "").replace(/[^\w.:@/+=-]/g, "").slice(0, 128);

/** Sets the request id, and logs one line per request once its body (stream or not) is finished. */
export function requestContext(log: (line: object) => void): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const startedAt = performance.now();
    const id = sanitizeId(c.req.header("x-request-id")) || crypto.randomUUID();
    const entry: RequestLog = { id, method: c.req.method, path: c.req.path };
    c.set("requestId", id);
    c.set("startedAt", startedAt);
    c.set("log", entry);
    await next();
    c.res.headers.set("x-request-id", id);
    const emit = () => {
      entry.status = c.res.status;
      entry.duration = (performance.now() - startedAt) / 1000;
      try {
        log({ ts: new Date().toISOString(), ...entry });
      } catch {
        // A broken log sink must not fail requests.
      }
    };
    const bodyDone = c.var.bodyDone;
    if (bodyDone) bodyDone.then(emit);
    else emit();
  };
}

const token = /^[\w!#$%&'*+.^`|~-]+$/;

/**
 * Allows exactly the listed origins (or any, for "*"). The Origin header is echoed only after an
 * exact match, so arbitrary origins are never reflected.
 */
export function cors(origins: string[]): MiddlewareHandler<AppEnv> {
  const anyOrigin = origins.includes("*");
  const allowed = new Set(origins);
  const allowOrigin = (origin: string | undefined) =>
    origin === undefined ? null : anyOrigin ? "*" : allowed.has(origin) ? origin : null;

  return async (c, next) => {
    const origin = allowOrigin(c.req.header("origin"));
    if (c.req.method === "OPTIONS" && c.req.header("access-control-request-method")) {
      const headers = new Headers({ vary: "Origin" });
      if (origin) {
        // Echo requested header names (not values): client SDKs send their own x-* headers.
        const asked = (c.req.header("access-control-request-headers") ?? "")
          .split(",").map((h) => h.trim()).filter((h) => token.test(h));
        headers.set("access-control-allow-origin", origin);
        headers.set("access-control-allow-methods", "GET, POST, OPTIONS");
        headers.set("access-control-allow-headers", ["authorization", "content-type", ...asked].join(", "));
        headers.set("access-control-max-age", "600");
      }
      return new Response(null, { status: 204, headers });
    }
    await next();
    c.res.headers.append("vary", "Origin");
    if (origin) {
      c.res.headers.set("access-control-allow-origin", origin);
      c.res.headers.set("access-control-expose-headers", "x-request-id, retry-after");
    }
  };
}

const sha256 = async (s: string) =>
  new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));

/** Compares digests without an early exit, so timing says nothing about where they differ. */
function sameDigest(a: Uint8Array, b: Uint8Array): number {
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return 1 - Math.min(diff, 1);
}

/** Requires `Authorization: Bearer <key>` matching one of keys; hashing first makes lengths equal. */
export function bearerAuth(keys: string[]): MiddlewareHandler<AppEnv> {
  const digests = Promise.all(keys.map(sha256));
  return async (c, next) => {
    const m = /^Bearer\s+(\S.*)$/i.exec((c.req.header("authorization") ?? "").trim());
    const given = await sha256(m?.[1] ?? "");
    let matched = 0;
    for (const d of await digests) matched |= sameDigest(d, given);
    if (!m || matched === 0) {
      throw new ApiError(
        401,
        m ? "Incorrect API key provided." : "Missing API key: send 'Authorization: Bearer <key>'.",
        {
          code: "invalid_api_key",
          headers: { "www-authenticate": "Bearer" },
        },
      );
    }
    await next();
  };
}
