// OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}.

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface ApiErrorOptions {
  type?: string;
  param?: string | null;
  code?: string | null;
  headers?: Record<string, string>;
}

/** An error with its HTTP status; thrown anywhere in a handler, rendered by the app's onError. */
export class ApiError extends Error {
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(readonly status: number, message: string, opts: ApiErrorOptions = {}) {
    super(message);
    this.name = "ApiError";
    this.type = opts.type ?? defaultType(status);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  response(): Response {
    return Response.json(this.body(), { status: this.status, headers: this.headers });
  }
}

function defaultType(status: number): string {
  if (status === 429) return "rate_limit_error";
  return status >= 500 ? "server_error" : "invalid_request_error";
}

export const badRequest = (message: string, param: string | null, code: string | null = null): ApiError =>
  new ApiError(400, message, { param, code });

/** Anything thrown that is not an ApiError is a bug or an engine failure: 500 without internals. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  return new ApiError(500, "internal server error", { code: "internal_error" });
}

/** Maps an engine "error" event to an HTTP error. */
export function engineError(
  e: { message: string; code: "context_length_exceeded" | "invalid_request" | "internal"; param?: string },
  param: string | null,
): ApiError {
  if (e.code === "context_length_exceeded") return badRequest(e.message, param, "context_length_exceeded");
  if (e.code === "invalid_request") return badRequest(e.message, e.param ?? null, "invalid_request");
  return new ApiError(500, e.message, { code: "internal_error" });
}
