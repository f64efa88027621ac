// Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise (logs, CI).

export interface ProgressState {
  total: number;
  done: number;
  failed: number;
  inFlight: number;
  outputTokens: number;
}

export interface Progress {
  start(label: string, total: number): void;
  update(s: ProgressState): void;
  finish(): void;
}

const encoder = new TextEncoder();
const write = (s: string) => Deno.stderr.writeSync(encoder.encode(s));

export function createProgress(opts: { enabled: boolean; tty?: boolean; intervalS?: number }): Progress {
  if (!opts.enabled) return { start() {}, update() {}, finish() {} };
  const tty = opts.tty ?? Deno.stderr.isTerminal();
  const intervalMs = tty ? 200 : (opts.intervalS ?? 10) * 1000;
  let label = "", t0 = 0, timer: ReturnType<typeof setInterval> | undefined;
  let state: ProgressState = { total: 0, done: 0, failed: 0, inFlight: 0, outputTokens: 0 };

  const line = () => {
    const el = (performance.now() - t0) / 1000;
    const fin = state.done + state.failed;
    const tps = el > 0 ? state.outputTokens / el : 0;
    const stats = `${fin}/${state.total} done, ${state.failed} failed, ${state.inFlight} in flight, ` +
      `${tps.toFixed(1)} out tok/s, ${el.toFixed(1)}s`;
    if (!tty) return `[${label}] ${stats}`;
    const width = 30;
    const filled = state.total > 0 ? Math.round((fin / state.total) * width) : 0;
    return `${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${stats}`;
  };
  const draw = () => write(tty ? `\r\x1b[2K${line()}` : `${line()}\n`);

  return {
    start(l, total) {
      label = l;
      t0 = performance.now();
      state = { total, done: 0, failed: 0, inFlight: 0, outputTokens: 0 };
      clearInterval(timer);
      timer = setInterval(draw, intervalMs);
      if (tty) draw();
    },
    update(s) {
      state = { ...s };
    },
    finish() {
      clearInterval(timer);
      timer = undefined;
      if (tty) write(`\r\x1b[2K${line()}\n`);
      else write(`${line()}\n`);
    },
  };
}
