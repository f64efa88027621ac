// Minimal assertions (deno std is unreachable from our machines).

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

export function assertEquals<T>(actual: T, expected: T, msg?: string) {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  if (a !== e) throw new AssertionError(`${msg ? msg + ": " : ""}expected ${e}, got ${a}`);
}

/** The caught error, after checking its message against `pattern` when there is one. */
function matching(e: unknown, pattern: RegExp | undefined): Error {
  const err = e as Error;
  if (pattern && !pattern.test(err.message)) {
    throw new AssertionError(`error "${err.message}" does not match ${pattern}`);
  }
  return err;
}

export async function assertRejects(fn: () => Promise<unknown>, pattern?: RegExp): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return matching(e, pattern);
  }
  throw new AssertionError("expected a rejection");
}

export function assertThrows(fn: () => unknown, pattern?: RegExp): Error {
  try {
    fn();
  } catch (e) {
    return matching(e, pattern);
  }
  throw new AssertionError("expected an exception");
}
