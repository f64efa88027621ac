// server/rlimit.ts reads the open-file limit the server runs under: Deno raises the soft limit to the
// hard one at start, so under `ulimit -n 600` (both limits) a process reports 600, and under a soft 512
// with the hard limit kept, the hard limit.

import { assertEquals } from "../helpers/assert.ts";

async function limitUnder(ulimit: string): Promise<{ reported: number | null; hard: number }> {
  const mod = new URL("../../server/rlimit.ts", import.meta.url).href;
  const script = `const { openFileLimit } = await import(${
    JSON.stringify(mod)
  }); console.log(openFileLimit());`;
  const out = await new Deno.Command("bash", {
    args: ["-c", `${ulimit} && ulimit -Hn && exec "${Deno.execPath()}" eval '${script}'`],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const [hard, reported] = new TextDecoder().decode(out.stdout).trim().split("\n");
  return { reported: reported === "null" ? null : Number(reported), hard: Number(hard) };
}

Deno.test({
  name: "rlimit: the server sees the hard open-file limit (Deno raises the soft one)",
  ignore: Deno.build.os !== "linux",
  async fn() {
    assertEquals((await limitUnder("ulimit -n 600")).reported, 600);
    const soft = await limitUnder("ulimit -Sn 512");
    assertEquals(soft.reported, soft.hard);
  },
});
