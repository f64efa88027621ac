// Seeded hostile requests for the HTTP layer: bodies, headers and content types (FuzzCase, sent with
// fetch) and raw byte streams (malformed request lines, chunked encodings) for a TCP socket.

/** A small seeded PRNG (mulberry32), so a failing case can be replayed from its seed and index. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export interface FuzzCase {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string | Uint8Array | null;
  /** What was done, for failure messages. */
  what: string;
}

const PATHS = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"];

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];

const deep = (n: number, kind: "[" | "{") =>
  kind === "[" ? "[".repeat(n) + "]".repeat(n) : '{"a":'.repeat(n) + "0" + "}".repeat(n);

/** Values that a field might hold, from plausible to hostile. */
function hostileValue(r: () => number): unknown {
  const choices: Array<() => unknown> = [
    () => null,
    () => true,
    () => 0,
    () => -1,
    () => 1e308,
    () => -1e308,
    () => 2 ** 53 + 1,
    () => 1.5,
    () => 3e-38,
    () => "NaN",
    () => "Infinity",
    () => "-0",
    () => "1e999",
    () => "",
    () => "\u0000\uFFFF\uD800",
    () => "😀".repeat(1 + Math.floor(r() * 50)),
    () => "x".repeat(Math.floor(r() * 20000)),
    () => "<s></s><|assistant|>",
    () => [],
    () => [1, 2, 3],
    () => Array.from({ length: Math.floor(r() * 5000) }, (_, i) => i),
    () => Array.from({ length: 100 }, () => "stop"),
    () => ({}),
    () => ({ "0": 1, "1": -1 }),
    () => ({ "99999999999": 100 }),
    () => [{ type: "text", text: "hi" }],
    () => [{ type: "image_url", image_url: { url: "x" } }],
    () => [{ role: "user", content: "hi" }],
    () => [{ role: "nobody", content: 1 }],
    () => JSON.parse(deep(20, "[")),
  ];
  return pick(r, choices)();
}

const FIELDS = [
  "model",
  "messages",
  "prompt",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "n",
  "stream",
  "stream_options",
  "stop",
  "stop_token_ids",
  "logit_bias",
  "logprobs",
  "top_logprobs",
  "seed",
  "presence_penalty",
  "frequency_penalty",
  "repetition_penalty",
  "ignore_eos",
  "echo",
  "suffix",
  "tokens",
  "add_special_tokens",
  "add_generation_prompt",
  "user",
  "__proto__",
  "constructor",
  "extra_field_" + "z".repeat(100),
];

function validBody(path: string, r: () => number): Record<string, unknown> {
  const small = { max_tokens: 1 + Math.floor(r() * 4) };
  switch (path) {
    case "/v1/chat/completions":
      return { messages: [{ role: "user", content: "Once upon a time" }], ...small, stream: r() < 0.3 };
    case "/v1/completions":
      return { prompt: "Once upon a time", ...small, stream: r() < 0.3 };
    case "/tokenize":
      return r() < 0.5 ? { prompt: "hello" } : { messages: [{ role: "user", content: "hello" }] };
    default:
      return { tokens: [1, 2, 3] };
  }
}

/** Invalid JSON text made from a valid body. */
function brokenJson(text: string, r: () => number): string | Uint8Array {
  const choices: Array<() => string | Uint8Array> = [
    () => text.slice(0, Math.floor(r() * text.length)),
    () => text + "}",
    () => text.replace(/"/, "'"),
    () => text.replace(":", ""),
    () => "{" + text,
    () => "",
    () => "null",
    () => "[]",
    () => '"a string"',
    () => "12345",
    () => "NaN",
    () => '{"messages": [}',
    () => deep(100_000, r() < 0.5 ? "[" : "{"),
    () => new Uint8Array(Array.from({ length: 1 + Math.floor(r() * 200) }, () => Math.floor(r() * 256))),
    () => new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), // invalid UTF-8
    () => "\uFEFF" + text,
  ];
  return pick(r, choices)();
}

const CONTENT_TYPES = [
  "application/json",
  "application/json; charset=utf-8",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "",
  "application/json; charset=latin1",
  "\u00ff/\u00ff",
];

const AUTH = [
  "Bearer wrong",
  "Bearer ",
  "Basic dXNlcjpwYXNz",
  "bearer " + "k".repeat(10_000),
  "Bearer key key",
  "Token x",
];

/** The i-th case of a seeded run. */
export function fuzzCase(seed: number, i: number): FuzzCase {
  const r = prng(seed * 1_000_003 + i);
  const path = r() < 0.05
    ? pick(r, ["/v1/models", "/health", "/metrics", "/nope", "/v1/chat/completions/x"])
    : pick(r, PATHS);
  const body = validBody(path, r);
  const headers: Record<string, string> = { "content-type": "application/json" };
  const what: string[] = [path];
  const mutations = 1 + Math.floor(r() * 3);
  let raw: string | Uint8Array | null = null;
  for (let m = 0; m < mutations; m++) {
    const kind = r();
    if (kind < 0.45) {
      const field = pick(r, FIELDS);
      const v = hostileValue(r);
      body[field] = v;
      what.push(`${field}=${JSON.stringify(v)?.slice(0, 40)}`);
    } else if (kind < 0.55) {
      const field = pick(r, Object.keys(body));
      delete body[field];
      what.push(`-${field}`);
    } else if (kind < 0.7) {
      raw = brokenJson(JSON.stringify(body), r);
      what.push("broken json");
    } else if (kind < 0.8) {
      headers["content-type"] = pick(r, CONTENT_TYPES);
      what.push(`content-type ${headers["content-type"]}`);
    } else if (kind < 0.88) {
      headers["authorization"] = pick(r, AUTH);
      what.push("auth");
    } else if (kind < 0.93) {
      const field = pick(r, ["messages", "prompt", "stop", "tokens", "logit_bias"]);
      body[field] = JSON.parse(deep(30 + Math.floor(r() * 10), r() < 0.5 ? "[" : "{"));
      what.push(`deep ${field}`);
    } else {
      headers["x-request-id"] = pick(r, [
        "",
        "a".repeat(5000),
        "\u00e9\u00e9",
        "../../etc",
        "id with spaces",
      ]);
      what.push("request id");
    }
  }
  const method = r() < 0.03 ? pick(r, ["GET", "PUT", "DELETE", "PATCH"]) : (path.startsWith("/v1/models") ||
      path === "/health" || path === "/metrics")
    ? "GET"
    : "POST";
  const sent = method === "GET" ? null : raw ?? JSON.stringify(body);
  return { method, path, headers, body: sent, what: `${method} ${what.join(", ")}` };
}

/** Raw HTTP/1.1 bytes: malformed request lines, headers and chunked framings. */
export function rawCase(seed: number, i: number): { bytes: string; what: string } {
  const r = prng(seed * 7_919 + i + 1);
  const json = '{"prompt":"hi","max_tokens":1}';
  const choices: Array<[string, string]> = [
    ["garbage line", "HELLO\r\n\r\n"],
    ["no version", "POST /v1/completions\r\n\r\n"],
    ["bad version", "POST /v1/completions HTTP/9.9\r\nhost: x\r\n\r\n"],
    ["huge path", `GET /${"a".repeat(100_000)} HTTP/1.1\r\nhost: x\r\n\r\n`],
    ["header without colon", "POST /v1/completions HTTP/1.1\r\nhost x\r\n\r\n"],
    ["bad content-length", "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n" + json],
    [
      "two content-lengths",
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: ${json.length}\r\n\r\n${json}`,
    ],
    [
      "content-length too small",
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n${json}`,
    ],
    [
      "bad chunk size",
      "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n" + json +
      "\r\n0\r\n\r\n",
    ],
    [
      "chunk longer than declared",
      "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n" + json +
      "\r\n0\r\n\r\n",
    ],
    [
      "chunked without terminator",
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n${
        json.length.toString(16)
      }\r\n${json}\r\n`,
    ],
    [
      "chunked and content-length",
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n${
        json.length.toString(16)
      }\r\n${json}\r\n0\r\n\r\n`,
    ],
    [
      "valid chunked in tiny pieces",
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n${
        [...json].map((ch) => `1\r\n${ch}\r\n`).join("")
      }0\r\n\r\n`,
    ],
    ["nul bytes", "POST /v1/completions HTTP/1.1\r\nhost: \u0000\r\n\r\n"],
    ["huge header", `GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${"b".repeat(200_000)}\r\n\r\n`],
    ["bare LF", `POST /v1/completions HTTP/1.1\nhost: x\ncontent-length: ${json.length}\n\n${json}`],
    [
      "half a request then close",
      'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"pro',
    ],
  ];
  const [what, bytes] = pick(r, choices);
  return { bytes, what };
}
