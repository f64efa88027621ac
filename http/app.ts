// The HTTP application: OpenAI-compatible routes over an EngineClient.
import { Hono } from "hono";
import { chatRoutes } from "./routes/chat.ts";
import { completionRoutes } from "./routes/completions.ts";
import type { AppDeps, AppEnv, Shared } from "./context.ts";
import { healthRoutes } from "./routes/health.ts";
import { Admission } from "./admission.ts";
import { metricsRoutes } from "./routes/metrics.ts";
import { bearerAuth, cors, requestContext } from "./middleware.ts";
import { modelRoutes } from "./routes/models.ts";
import { tokenizeRoutes } from "./routes/tokenize.ts";
import { uiRoutes } from "./routes/ui.ts";
import { ApiError, toApiError } from "./errors.ts";
import { Metrics } from "./metrics.ts";

export type { AppDeps, AppEnv } from "./context.ts";

const INFERENCE_PATHS = ["/v1/*", "/tokenize", "/detokenize"];

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const { config } = deps;
  const s: Shared = {
    deps,
    config,
    metrics: deps.metrics ?? new Metrics(),
    admission: new Admission(),
    keepAliveMs: deps.keepAliveMs ?? 15_000,
    commitMs: deps.commitMs ?? 500,
  };
  const log = deps.log ?? ((line: object) => console.log(JSON.stringify(line)));

  const app = new Hono<AppEnv>();
  app.use(requestContext(log));
  if (config.corsOrigins.length > 0) app.use(cors(config.corsOrigins));
  if (config.apiKeys.length > 0) {
    const auth = bearerAuth(config.apiKeys);
    for (const path of INFERENCE_PATHS) app.use(path, auth);
  }
  if (config.metricsKey !== undefined) app.use("/metrics", bearerAuth([config.metricsKey]));

  app.route("/", chatRoutes(s));
  app.route("/", completionRoutes(s));
  app.route("/", modelRoutes(s));
  app.route("/", tokenizeRoutes(s));
  app.route("/", healthRoutes(s));
  app.route("/", metricsRoutes(s));
  if (!config.noUi) app.route("/", uiRoutes());

  app.notFound((c) =>
    new ApiError(404, `No route for ${c.req.method} ${c.req.path}.`, { code: "not_found" }).response()
  );
  app.onError((err, c) => {
    if (!(err instanceof ApiError)) {
      // Details stay in the log; clients get a generic 500.
      const entry = c.get("log");
      if (entry) entry.error = err instanceof Error ? err.stack ?? err.message : String(err);
    }
    return toApiError(err).response();
  });
  return app;
}
