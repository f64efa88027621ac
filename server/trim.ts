// Gives freed heap memory back to the OS after connections that carried large bodies close. glibc keeps
// what the HTTP stack freed (socket reads, body chunks) in its arenas: after 100 uploads stalled one byte
// short of 1 MiB, RSS stayed ~140 MiB higher although every buffer was free; malloc_trim returns it
// (docs/RELIABILITY.md). Needs FFI (the server runs with --allow-all) and glibc; otherwise a no-op.
// RAGTIME_MALLOC_TRIM=0 turns it off (to measure what the allocator keeps without it).

/** Waits this long after the last request for a trim, so a burst of closes costs one call. */
const QUIET_MS = 1000;
/** At most one trim per this interval. */
const MIN_INTERVAL_MS = 5000;

function trimDisabled(): boolean {
  try {
    return ["0", "false", "off", "no"].includes(
      (Deno.env.get("RAGTIME_MALLOC_TRIM") ?? "").trim().toLowerCase(),
    );
  } catch {
    return false; // no env permission: the default
  }
}

export function memoryTrimmer(): () => void {
  let trim: (() => void) | null = null;
  try {
    if (Deno.build.os === "linux" && !trimDisabled()) {
      const libc = Deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
      trim = () => void libc.symbols.malloc_trim(0n);
    }
  } catch {
    // no FFI permission, or not glibc
  }
  if (!trim) return () => {};
  let timer: ReturnType<typeof setTimeout> | undefined;
  let last = -Infinity;
  return () => {
    clearTimeout(timer);
    const wait = Math.max(QUIET_MS, last + MIN_INTERVAL_MS - performance.now());
    timer = setTimeout(() => {
      last = performance.now();
      trim!();
    }, wait);
    Deno.unrefTimer(timer);
  };
}
