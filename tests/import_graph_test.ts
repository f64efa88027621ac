// The product code's import graph (main.ts, engine/, http/, server/), as `deno info` resolves it: no
// cycles, and edges one way: the HTTP layer reaches the engine only through engine/protocol.ts and
// never the process shell; the engine imports neither.
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const FOLDERS = ["engine", "http", "server"];

async function productFiles(): Promise<string[]> {
  const files = ["main.ts"];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(dir, ROOT))) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory) await walk(path);
      else if (e.name.endsWith(".ts")) files.push(path);
    }
  };
  for (const f of FOLDERS) await walk(f);
  return files.sort();
}

/** Every import (static, dynamic or type-only) between product files, as repository-relative paths. */
async function importGraph(): Promise<Map<string, string[]>> {
  const files = await productFiles();
  const dir = await Deno.makeTempDir();
  try {
    const root = `${dir}/all.ts`;
    await Deno.writeTextFile(root, files.map((f) => `import "${new URL(f, ROOT).href}";\n`).join(""));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", "--config", new URL("deno.json", ROOT).pathname, root],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: {
        specifier: string;
        dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
      }[];
    };
    const local = (spec: string | undefined) =>
      spec?.startsWith(ROOT.href) ? spec.slice(ROOT.href.length) : undefined;
    const graph = new Map<string, string[]>();
    for (const m of info.modules) {
      const from = local(m.specifier);
      if (from === undefined || !files.includes(from)) continue;
      const to = (m.dependencies ?? []).flatMap((d) => [local(d.code?.specifier), local(d.type?.specifier)]);
      graph.set(from, [...new Set(to.filter((t): t is string => t !== undefined))].sort());
    }
    assert.deepEqual([...graph.keys()].sort(), files, "deno info saw every product file");
    return graph;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** One cycle as a path (first node repeated at the end), or null. */
function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === "done") return null;
    if (state.get(n) === "open") return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, "open");
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      const cycle = visit(m);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(n, "done");
    return null;
  };
  for (const n of graph.keys()) {
    const cycle = visit(n);
    if (cycle) return cycle;
  }
  return null;
}

const edges = (graph: Map<string, string[]>) =>
  [...graph].flatMap(([from, tos]) => tos.map((to) => [from, to]));

Deno.test("import graph: no cycles", async () => {
  const cycle = findCycle(await importGraph());
  assert.equal(cycle, null, `import cycle: ${cycle?.join(" -> ")}`);
});

Deno.test("import graph: http/ reaches the engine only through engine/protocol.ts; engine/ imports no HTTP or shell", async () => {
  const graph = await importGraph();
  const bad = edges(graph).filter(([from, to]) =>
    from.startsWith("http/")
      ? (to.startsWith("engine/") && to !== "engine/protocol.ts") || to.startsWith("server/") ||
        to === "main.ts"
      : from.startsWith("engine/") && (to.startsWith("http/") || to.startsWith("server/") || to === "main.ts")
  );
  assert.deepEqual(bad.map(([from, to]) => `${from} -> ${to}`), []);
  // The check has something to check: http/ does import the protocol module.
  assert.ok(edges(graph).some(([from, to]) => from.startsWith("http/") && to === "engine/protocol.ts"));
});
