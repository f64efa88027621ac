// The front's HTTP/1.1 framing: message ends found whatever the split of the bytes into reads.
import { assertEquals } from "../helpers/assert.ts";
import { Framing, type MessageHead } from "../../server/http1_framing.ts";

const enc = new TextEncoder();

/** Feeds `text` in pieces of `step` bytes; returns the heads and how many messages ended. */
function frame(kind: "request" | "response", text: string, step: number, bodiless = () => false) {
  const heads: MessageHead[] = [];
  let ends = 0;
  const f = new Framing(kind, { head: (h) => heads.push(h), end: () => ends++ }, bodiless);
  const bytes = enc.encode(text);
  for (let i = 0; i < bytes.byteLength; i += step) f.push(bytes.subarray(i, i + step));
  return { heads, ends, phase: f.phase };
}

const REQUESTS = "GET /a HTTP/1.1\r\nhost: x\r\n\r\n" +
  "POST /b HTTP/1.1\r\nhost: x\r\nContent-Length: 5\r\n\r\nhello" +
  "\r\nPOST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n" +
  "trailer: t\r\n\r\n" +
  "HEAD /d HTTP/1.1\n\n";

for (const step of [1, 2, 7, 1000]) {
  Deno.test(`framing: pipelined requests (length, chunked, bare LF) in ${step}-byte reads`, () => {
    const r = frame("request", REQUESTS, step);
    assertEquals(r.heads.map((h) => h.method).join(","), "GET,POST,POST,HEAD");
    assertEquals(r.ends, 4);
    assertEquals(r.phase, "start");
  });
}

Deno.test("framing: a body in progress is partial and in the body", () => {
  const f = new Framing("request", { head: () => {}, end: () => {} });
  f.push(enc.encode("POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\n12345"));
  assertEquals([f.partial, f.inBody], [true, true]);
  f.push(enc.encode("67890"));
  assertEquals([f.partial, f.inBody], [false, false]);
});

Deno.test("framing: framing the server must judge is passed through as opaque", () => {
  for (
    const head of [
      "content-length: 5\r\ncontent-length: 6",
      "content-length: -1",
      "transfer-encoding: gzip",
      "transfer-encoding: chunked\r\ncontent-length: 3",
      "connection: upgrade\r\nupgrade: websocket",
    ]
  ) {
    const r = frame("request", `POST / HTTP/1.1\r\n${head}\r\n\r\nabc`, 3);
    assertEquals(r.phase, "opaque", head);
  }
  assertEquals(
    frame("request", "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 1).phase,
    "opaque",
  );
});

Deno.test("framing: responses: interim, HEAD, 204, chunked, close-delimited", () => {
  const text = "HTTP/1.1 100 Continue\r\n\r\n" +
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" +
    "HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n" + // answers HEAD: no body
    "HTTP/1.1 204 No Content\r\n\r\n" +
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\ndata:\r\n0\r\n\r\n" +
    "HTTP/1.1 200 OK\r\n\r\nuntil the end";
  let answered = 0;
  const heads: MessageHead[] = [];
  let ends = 0;
  const f = new Framing("response", { head: (h) => heads.push(h), end: () => ends++ }, () => answered === 1);
  const bytes = enc.encode(text);
  for (let i = 0; i < bytes.byteLength; i += 3) {
    const before = ends;
    f.push(bytes.subarray(i, i + 3));
    answered += ends - before;
  }
  assertEquals(heads.map((h) => h.status).join(","), "100,200,200,204,200,200");
  assertEquals(heads.map((h) => h.close).join(","), "false,false,false,false,true,false");
  assertEquals(ends, 4);
  assertEquals(f.phase, "eof");
});
