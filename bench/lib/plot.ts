// Plots of bench results as hand-written SVG (no browser, no library): output throughput, TTFT and ITL
// percentiles, per batching mode (--compare) or per request rate (a Poisson sweep, one file per rate).

export interface Series {
  name: string;
  /** One value per category; null where a run has no value (failed). */
  values: (number | null)[];
}

export interface Chart {
  title: string;
  yLabel: string;
  /** Bars for modes (unordered categories), lines for rates (ordered). */
  kind: "bar" | "line";
  categories: string[];
  xLabel: string;
  series: Series[];
}

const PANEL_W = 380;
const PANEL_H = 270;
const M = { left: 62, right: 14, top: 34, bottom: 70 };
const COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#c53030", "#718096"];

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
/** Tick and tooltip numbers: 0, 2.50, 12.5, 250, 150k. */
function fmt(v: number): string {
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 10_000) return String(v);
  if (a >= 10_000) return `${Number((v / 1000).toPrecision(4))}k`;
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** A round axis top and its ticks (1, 2 or 5 times a power of ten per step). */
export function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * p).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let t = 0; t < max + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

/** One chart as SVG elements, drawn in a PANEL_W x PANEL_H box at (x0, 0). */
function panel(c: Chart, x0: number): string {
  const w = PANEL_W - M.left - M.right;
  const h = PANEL_H - M.top - M.bottom;
  const all = c.series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const ticks = niceTicks(Math.max(0, ...all));
  const top = ticks[ticks.length - 1];
  const y = (v: number) => M.top + h - (v / top) * h;
  const n = c.categories.length;
  const band = w / Math.max(1, n);
  const cx = (i: number) => M.left + band * (i + 0.5);
  const out: string[] = [`<g transform="translate(${x0},0)">`];
  out.push(`<text x="${PANEL_W / 2}" y="18" text-anchor="middle" font-weight="bold">${esc(c.title)}</text>`);
  for (const t of ticks) {
    out.push(
      `<line x1="${M.left}" x2="${M.left + w}" y1="${y(t)}" y2="${y(t)}" stroke="#e2e8f0"/>`,
      `<text x="${M.left - 6}" y="${y(t) + 4}" text-anchor="end">${fmt(t)}</text>`,
    );
  }
  out.push(
    `<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${M.top + h}" stroke="#4a5568"/>`,
    `<line x1="${M.left}" x2="${M.left + w}" y1="${M.top + h}" y2="${M.top + h}" stroke="#4a5568"/>`,
    `<text transform="translate(14,${M.top + h / 2}) rotate(-90)" text-anchor="middle">${
      esc(c.yLabel)
    }</text>`,
    `<text x="${M.left + w / 2}" y="${PANEL_H - 30}" text-anchor="middle">${esc(c.xLabel)}</text>`,
  );
  c.categories.forEach((cat, i) => {
    out.push(`<text x="${cx(i)}" y="${M.top + h + 16}" text-anchor="middle">${esc(cat)}</text>`);
  });
  c.series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    out.push(`<g class="series" data-name="${esc(s.name)}">`);
    if (c.kind === "bar") {
      const bw = (band * 0.8) / c.series.length;
      s.values.forEach((v, i) => {
        if (v === null || !Number.isFinite(v)) return;
        const x = cx(i) - band * 0.4 + k * bw;
        out.push(
          `<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${bw.toFixed(1)}" ` +
            `height="${(M.top + h - y(v)).toFixed(1)}" fill="${color}"><title>${esc(s.name)} ${
              esc(c.categories[i])
            }: ${fmt(v)}</title></rect>`,
        );
      });
    } else {
      const pts = s.values.map((v, i) => v === null || !Number.isFinite(v) ? null : [cx(i), y(v), v] as const)
        .filter((p) => p !== null);
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2" points="${
          pts.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" ")
        }"/>`,
      );
      for (const p of pts) {
        out.push(
          `<circle cx="${p[0].toFixed(1)}" cy="${p[1].toFixed(1)}" r="3" fill="${color}"><title>${
            esc(s.name)
          }: ${fmt(p[2])}</title></circle>`,
        );
      }
    }
    out.push("</g>");
    // Legend under the x label.
    const lx = M.left + k * Math.min(100, w / c.series.length);
    out.push(
      `<rect x="${lx}" y="${PANEL_H - 18}" width="10" height="10" fill="${color}"/>`,
      `<text x="${lx + 14}" y="${PANEL_H - 9}">${esc(s.name)}</text>`,
    );
  });
  out.push("</g>");
  return out.join("\n");
}

/** Charts side by side in one SVG document, with a caption line. */
export function svgCharts(charts: Chart[], caption = ""): string {
  const width = PANEL_W * charts.length;
  const height = PANEL_H + (caption ? 20 : 0);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    ...charts.map((c, i) => panel(c, i * PANEL_W)),
    caption ? `<text x="8" y="${height - 6}" fill="#4a5568">${esc(caption)}</text>` : "",
    "</svg>",
    "",
  ].join("\n");
}

/** What a plot needs of a --result-json document (bench.ts writes it). */
export interface ResultDoc {
  config: { rate: number | "inf" | null; label?: string | null };
  runs: {
    label: string;
    mode: string | null;
    metrics: {
      outputThroughput: number;
      ttftMs: { p50: number; p90: number; p99: number };
      itlMs: { p50: number; p90: number; p99: number };
    } | null;
  }[];
}

interface Point {
  category: string;
  /** For ordering rates. */
  order: number;
  throughput: number[];
  ttft: number[][];
  itl: number[][];
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * Charts for one or more result documents: per rate when they differ in their request rate (a sweep:
 * lines), else per mode or run label (bars). Rounds of one mode are averaged.
 */
export function resultCharts(docs: ResultDoc[]): Chart[] {
  const rates = docs.map((d) => d.config.rate);
  const byRate = docs.length > 1 && new Set(rates.map(String)).size === docs.length;
  const points = new Map<string, Point>();
  for (const [di, d] of docs.entries()) {
    for (const r of d.runs) {
      if (!r.metrics) continue;
      const rate = d.config.rate;
      const category = byRate
        ? (rate === "inf" || rate === null ? "inf" : String(rate))
        : (r.mode ?? r.label);
      const order = byRate ? (typeof rate === "number" ? rate : Infinity) : points.size + di * 1e-6;
      const p = points.get(category) ?? { category, order, throughput: [], ttft: [], itl: [] };
      const m = r.metrics;
      p.throughput.push(m.outputThroughput);
      p.ttft.push([m.ttftMs.p50, m.ttftMs.p90, m.ttftMs.p99]);
      p.itl.push([m.itlMs.p50, m.itlMs.p90, m.itlMs.p99]);
      points.set(category, p);
    }
  }
  const ps = [...points.values()].sort((a, b) => a.order - b.order);
  if (ps.length === 0) throw new Error("no run with metrics to plot");
  const kind = byRate ? "line" : "bar";
  const xLabel = byRate ? "request rate (requests/s, Poisson)" : "batching mode";
  const categories = ps.map((p) => p.category);
  const pct = (get: (p: Point) => number[][]): Series[] =>
    ["p50", "p90", "p99"].map((name, i) => ({ name, values: ps.map((p) => mean(get(p).map((v) => v[i]))) }));
  return [
    {
      title: "Output throughput",
      yLabel: "tokens/s",
      kind,
      categories,
      xLabel,
      series: [{ name: "output tokens/s", values: ps.map((p) => mean(p.throughput)) }],
    },
    { title: "Time to first token", yLabel: "ms", kind, categories, xLabel, series: pct((p) => p.ttft) },
    { title: "Inter-token latency", yLabel: "ms", kind, categories, xLabel, series: pct((p) => p.itl) },
  ];
}

/** The SVG path beside a result JSON: x.json -> x.svg. */
export const plotPathFor = (json: string) => json.replace(/\.json$/i, "") + ".svg";

/** Reads result documents and writes their plot; returns the SVG's path. */
export async function plotFiles(files: string[], out = plotPathFor(files[0])): Promise<string> {
  const docs = await Promise.all(files.map(async (f) => JSON.parse(await Deno.readTextFile(f)) as ResultDoc));
  const dir = (f: string) => f.replace(/[^/]*$/, "");
  const caption = files.every((f) => dir(f) === dir(files[0]))
    ? `${dir(files[0])}: ${files.map((f) => f.slice(dir(f).length)).join(", ")}`
    : files.join(", ");
  await Deno.writeTextFile(out, svgCharts(resultCharts(docs), caption));
  return out;
}
