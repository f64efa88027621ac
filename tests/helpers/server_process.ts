// Runs the real server (main.ts) as a subprocess on a free port, for end-to-end tests.
import { STORIES260K } from "./fixtures.ts";

const REPO_ROOT = new URL("../..", import.meta.url).pathname;
/** Kept from the server's stdout and stderr, for failure messages. */
const OUTPUT_LIMIT = 256 * 1024;

export interface ServerProcess {
  port: number;
  origin: string;
  baseURL: string;
  child: Deno.ChildProcess;
  /** Resolves when the process has exited. */
  status: Promise<Deno.CommandStatus>;
  /** Whether the process has exited. */
  readonly exited: boolean;
  /** What the server printed so far (stdout and stderr interleaved, the last 256 KiB). */
  output(): string;
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`; resolves with the exit status. */
  stop(graceMs?: number): Promise<Deno.CommandStatus>;
}

export interface SpawnOptions {
  /** Flags after `--model STORIES260K --port P --max-model-len 512`. */
  args?: string[];
  /** How long to wait for /health to say 200. */
  readyTimeoutMs?: number;
  /** Environment variables added to the server's. */
  env?: Record<string, string>;
}

/** A port that was free a moment ago (listen on port 0, note it, close). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves after `ms` unless `p` settles first; never rejects on timeout (returns null). */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<null>((r) => timer = setTimeout(() => r(null), ms))]);
  } finally {
    clearTimeout(timer);
  }
}

function spawn(port: number, args: string[], env: Record<string, string> = {}): ServerProcess {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "main.ts",
      "--model",
      STORIES260K,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--max-model-len",
      "512",
      ...args,
    ],
    cwd: REPO_ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  let out = "";
  const append = (s: string) => {
    out += s;
    if (out.length > OUTPUT_LIMIT) out = out.slice(out.length - OUTPUT_LIMIT);
  };
  // Both pipes must be drained, or the server blocks once a pipe buffer fills up.
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    try {
      const decoder = new TextDecoder();
      for await (const bytes of stream) append(decoder.decode(bytes, { stream: true }));
    } catch {
      // the process went away mid-read
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then(async (s) => {
    exited = true;
    await pumps;
    return s;
  });

  const origin = `http://127.0.0.1:${port}`;
  return {
    port,
    origin,
    baseURL: `${origin}/v1`,
    child,
    status,
    get exited() {
      return exited;
    },
    output: () => out,
    async stop(graceMs = 15_000) {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch {
          // already gone
        }
      }
      const s = await within(status, graceMs);
      if (s) return s;
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      return await status;
    },
  };
}

/**
 * Starts `main.ts` on the stories260K model and waits until /health answers 200. On failure the
 * process is killed and the error carries its output. Retries on another port if the one picked
 * was taken in the meantime.
 */
export async function startServerProcess(opts: SpawnOptions = {}): Promise<ServerProcess> {
  const deadlineMs = opts.readyTimeoutMs ?? 90_000;
  for (let attempt = 1;; attempt++) {
    const proc = spawn(freePort(), opts.args ?? [], opts.env);
    const t0 = performance.now();
    let lastError = "";
    while (!proc.exited && performance.now() - t0 < deadlineMs) {
      try {
        const res = await fetch(`${proc.origin}/health`, { signal: AbortSignal.timeout(2000) });
        await res.body?.cancel();
        if (res.status === 200) return proc;
        lastError = `status ${res.status}`;
      } catch (e) {
        lastError = (e as Error).message; // not listening yet
      }
      await sleep(100);
    }
    const status = await proc.stop(2000);
    const output = proc.output();
    if (attempt < 3 && /AddrInUse|address already in use/i.test(output)) continue;
    throw new Error(
      `server did not become healthy within ${deadlineMs} ms (exit ${status.code}, last: ${lastError})\n` +
        `--- server output ---\n${output}`,
    );
  }
}

/**
 * Runs `fn` with a started server and always stops it afterwards; the server's output is added
 * to any failure.
 */
export async function withServerProcess(
  opts: SpawnOptions,
  fn: (s: ServerProcess) => Promise<void>,
): Promise<void> {
  const s = await startServerProcess(opts);
  try {
    await fn(s);
  } catch (e) {
    if (e instanceof Error) e.message += `\n--- server output (tail) ---\n${s.output().slice(-8000)}`;
    throw e;
  } finally {
    await s.stop();
  }
}
