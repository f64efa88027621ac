// Prints the WebGPU adapter Deno gets (GPU name, or the software fallback), its features and, where the
// adapter has them (Dawn's chromium-experimental-subgroup-matrix), its subgroup-matrix configurations.
const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
console.log(
  a ? `${a.info.description || a.info.vendor} (fallback: ${a.info.isFallbackAdapter})` : "no adapter",
);
console.log(a ? [...a.features].join(",") : "");
interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}
const configs = (a?.info as { subgroupMatrixConfigs?: SubgroupMatrixConfig[] } | undefined)
  ?.subgroupMatrixConfigs;
if (configs) {
  // Getters on the config objects: JSON.stringify sees none of them.
  const text = [...configs].map((c) => `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`);
  console.log(`subgroup-matrix configs (M x N x K): ${text.join(", ") || "none"}`);
  const info = a!.info as { subgroupMinSize?: number; subgroupMaxSize?: number };
  console.log(`subgroup size ${info.subgroupMinSize}-${info.subgroupMaxSize}`);
}
