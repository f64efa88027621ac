// The front needs open files: a connection in flight holds three descriptors (the client's socket,
// the socket to Deno.serve behind the front, and that one's accepted end), so --max-connections 1024
// needs ~3,300 with the engine's own. Deno raises its soft limit to the hard limit at start (seen:
// `ulimit -Sn 512` -> 20,000), so only a low hard limit can fall short; past it, accepts fail
// (EMFILE) and the front refuses work. The server warns at start instead of failing later.

/** The process's open-file limit (soft), from /proc on Linux; null elsewhere or unreadable. */
export function openFileLimit(): number | null {
  if (Deno.build.os !== "linux") return null;
  try {
    const line = Deno.readTextFileSync("/proc/self/limits").split("\n").find((l) =>
      l.startsWith("Max open files")
    );
    const soft = line?.split(/\s{2,}/)[1];
    if (soft === undefined) return null;
    return soft === "unlimited" ? Infinity : Number(soft);
  } catch {
    return null;
  }
}

/** Descriptors the front needs for `maxConnections` connections in flight, with room for the rest. */
export function openFilesFor(maxConnections: number): number {
  return 3 * maxConnections + 256;
}
