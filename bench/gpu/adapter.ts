// Prints the WebGPU adapter Deno gets (GPU name, or the software fallback).
const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
console.log(
  a ? `${a.info.description || a.info.vendor} (fallback: ${a.info.isFallbackAdapter})` : "no adapter",
);
console.log(a ? [...a.features].join(",") : "");
