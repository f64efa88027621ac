// Imported first by the Worker (ORT itself is imported dynamically after it): a Deno worker has a
// `location` whose origin is the string "null", which onnxruntime-web then uses as a URL base for
// its wasm and fails. The main thread has no `location`, so make the worker look the same.
Object.defineProperty(globalThis, "location", { value: undefined, configurable: true });
