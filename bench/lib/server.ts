// Starts and stops a ragtime server as a child process for side-by-side runs.

export interface ServerHandle {
  baseUrl: string;
  port: number;
  logPath: string;
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Repository root, where main.ts lives. */
  root: string;
  model: string;
  batching: string;
  extraArgs: string[];
  logPath: string;
  startTimeoutS: number;
  /** How long SIGTERM gets before SIGKILL. */
  stopTimeoutS: number;
}

/** Splits a command line like a POSIX shell would for words and quotes (no expansion). */
export function splitArgs(s: string): string[] {
  const out: string[] = [];
  let cur = "", inWord = false, quote: '"' | "'" | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < s.length && /["\\$`]/.test(s[i + 1])) cur += s[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < s.length) {
      cur += s[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new Error(`unbalanced ${quote} in: ${s}`);
  if (inWord) out.push(cur);
  return out;
}

/** A port the OS says is free right now (racy by nature, but the server reports a bind failure). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

const live = new Set<Deno.ChildProcess>();
let hooked = false;

/** Kills servers we started if the bench itself is interrupted, so no orphan holds the GPU. */
function hookSignals(): void {
  if (hooked) return;
  hooked = true;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      for (const c of live) {
        try {
          c.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
      Deno.exit(130);
    });
  }
}

async function tail(path: string, lines = 30): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startServer(o: StartOptions): Promise<ServerHandle> {
  hookSignals();
  const port = freePort();
  const args = ["run", "-A", "main.ts", "--model", o.model, "--port", String(port), "--batching", o.batching];
  args.push(...o.extraArgs);
  const log = await Deno.open(o.logPath, { write: true, create: true, truncate: true });
  await log.write(new TextEncoder().encode(`$ ${Deno.execPath()} ${args.join(" ")}\n`));
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: o.root,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  live.add(child);
  // Both streams go to one file; interleaving is per chunk, which is fine for a log.
  const sink = new WritableStream<Uint8Array>({ write: (chunk) => log.write(chunk).then(() => {}) });
  const [a, b] = [child.stdout, child.stderr];
  const merged = new ReadableStream<Uint8Array>({
    async start(ctl) {
      const pump = async (s: ReadableStream<Uint8Array>) => {
        for await (const c of s) ctl.enqueue(c);
      };
      await Promise.allSettled([pump(a), pump(b)]);
      ctl.close();
    },
  });
  const drained = merged.pipeTo(sink).catch(() => {}).finally(() => log.close());

  let exited: Deno.CommandStatus | null = null;
  const status = child.status.then((s) => {
    exited = s;
    live.delete(child);
    return s;
  });

  const stop = async () => {
    if (exited === null) {
      try {
        child.kill("SIGTERM");
      } catch {
        // exited in between
      }
      const timer = sleep(o.stopTimeoutS * 1000).then(() => "timeout" as const);
      if (await Promise.race([status, timer]) === "timeout") {
        try {
          child.kill("SIGKILL");
        } catch {
          // exited in between
        }
        await status;
      }
    }
    await drained;
  };

  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = performance.now() + o.startTimeoutS * 1000;
  while (performance.now() < deadline) {
    if (exited !== null) {
      await drained;
      throw new Error(
        `server (${o.batching}) exited with code ${
          (exited as Deno.CommandStatus).code
        } before becoming healthy; ` +
          `log ${o.logPath}:\n${await tail(o.logPath)}`,
      );
    }
    try {
      const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      if (res.status === 200) return { baseUrl, port, logPath: o.logPath, stop };
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  await stop();
  throw new Error(
    `server (${o.batching}) not healthy after ${o.startTimeoutS}s; log ${o.logPath}:\n${await tail(
      o.logPath,
    )}`,
  );
}
