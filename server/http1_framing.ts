// Incremental HTTP/1.1 message framing for the connection front (server/front.ts): finds where each
// request or response head and body ends (Content-Length, chunked, or until close) without keeping or
// changing the bytes. Whatever it cannot frame confidently (conflicting lengths, unknown codings,
// protocol upgrades) makes the stream "opaque": the bytes still pass, and the real server judges them.

/** A parsed message head: what framing and the front need, nothing else. */
export interface MessageHead {
  /** Requests only: the method as sent. */
  method?: string;
  /** Responses only: the status code. */
  status?: number;
  /** `Connection: close` was sent. */
  close: boolean;
}

export interface FramingEvents {
  /** A head ended; for a response it is final unless its status is 1xx. */
  head(h: MessageHead): void;
  /** A message (head and body) ended. */
  end(): void;
}

type Phase =
  | "start" // before a message's first byte (stray CRLFs between messages are skipped)
  | "head"
  | "length" // a Content-Length body
  | "chunk-size"
  | "chunk-data"
  | "chunk-crlf"
  | "trailer"
  | "eof" // a response body delimited by the connection's close
  | "opaque";

/** Largest head kept for parsing; beyond it the server has answered 431 long before. */
const MAX_HEAD = 1 << 20;
/** Longest chunk-size or trailer line. */
const MAX_LINE = 8192;

const latin1 = new TextDecoder("latin1");
const LF = 10, CR = 13;

export class Framing {
  phase: Phase = "start";
  #head: Uint8Array[] = [];
  #headBytes = 0;
  /** Inside the head (or a trailer): the previous byte ended a line, ignoring CR. */
  #lineStart = false;
  #remaining = 0;
  #line = 0;
  #lineText = "";

  /**
   * @param kind which side's messages these are
   * @param events called as heads and messages end
   * @param bodiless responses only: whether the response about to be framed answers a HEAD request
   */
  constructor(
    readonly kind: "request" | "response",
    readonly events: FramingEvents,
    readonly bodiless: () => boolean = () => false,
  ) {}

  /** Somewhere inside a message (not between messages). */
  get partial(): boolean {
    return this.phase !== "start";
  }

  /** Inside a request or response body. */
  get inBody(): boolean {
    return this.phase !== "start" && this.phase !== "head" && this.phase !== "opaque";
  }

  /** Feeds the next bytes of the stream. */
  push(bytes: Uint8Array): void {
    // Each step consumes what its phase can from `i` on and returns where it stopped; one that turns
    // the stream opaque stops here on the next turn.
    let i = 0;
    while (i < bytes.byteLength) {
      switch (this.phase) {
        case "opaque":
        case "eof":
          return;
        case "start":
          i = this.#skipBetweenMessages(bytes, i);
          break;
        case "head":
          i = this.#readHead(bytes, i);
          break;
        case "length":
          i = this.#readLengthBody(bytes, i);
          break;
        case "chunk-size":
        case "trailer":
          i = this.#readLine(bytes, i);
          break;
        case "chunk-data":
          i = this.#readChunkData(bytes, i);
          break;
        case "chunk-crlf":
          i = this.#readChunkEnd(bytes, i);
          break;
      }
    }
  }

  /** Skips the stray CRLFs clients may send between messages; any other byte starts a head. */
  #skipBetweenMessages(bytes: Uint8Array, i: number): number {
    const b = bytes[i];
    if (b === CR || b === LF) return i + 1;
    this.phase = "head";
    this.#head = [];
    this.#headBytes = 0;
    this.#lineStart = false;
    return i;
  }

  /** Keeps head bytes up to the blank line that ends it (a head may span many pushes). */
  #readHead(bytes: Uint8Array, i: number): number {
    const from = i;
    let done = false;
    for (; i < bytes.byteLength; i++) {
      const b = bytes[i];
      if (b === LF) {
        if (this.#lineStart) {
          done = true;
          i++;
          break;
        }
        this.#lineStart = true;
      } else if (b !== CR) this.#lineStart = false;
    }
    this.#headBytes += i - from;
    if (this.#headBytes > MAX_HEAD) {
      this.phase = "opaque";
      return i;
    }
    this.#head.push(bytes.slice(from, i));
    if (done) this.#onHead();
    return i;
  }

  #readLengthBody(bytes: Uint8Array, i: number): number {
    const take = Math.min(this.#remaining, bytes.byteLength - i);
    this.#remaining -= take;
    if (this.#remaining === 0) this.#end();
    return i + take;
  }

  /** A chunk-size or trailer line, a byte at a time (it may span pushes); acted on at its LF. */
  #readLine(bytes: Uint8Array, i: number): number {
    const b = bytes[i++];
    if (++this.#line > MAX_LINE) {
      this.phase = "opaque";
      return i;
    }
    if (b !== LF) {
      if (b !== CR) this.#lineText += String.fromCharCode(b);
      return i;
    }
    const line = this.#lineText;
    this.#lineText = "";
    this.#line = 0;
    if (this.phase === "trailer") {
      // Trailer fields are skipped; the blank line ends the message.
      if (line === "") this.#end();
    } else this.#onChunkSize(line);
    return i;
  }

  /** Chunk extensions are ignored; a size it cannot read leaves the judgement to the server. */
  #onChunkSize(line: string): void {
    const m = /^([0-9a-fA-F]{1,15})[ \t]*(;.*)?$/.exec(line);
    if (!m) {
      this.phase = "opaque";
      return;
    }
    this.#remaining = parseInt(m[1], 16);
    this.phase = this.#remaining === 0 ? "trailer" : "chunk-data";
  }

  #readChunkData(bytes: Uint8Array, i: number): number {
    const take = Math.min(this.#remaining, bytes.byteLength - i);
    this.#remaining -= take;
    if (this.#remaining === 0) {
      this.phase = "chunk-crlf";
      this.#line = 0;
    }
    return i + take;
  }

  /** The CRLF after a chunk's data: a bare LF is accepted, anything else turns the stream opaque. */
  #readChunkEnd(bytes: Uint8Array, i: number): number {
    const b = bytes[i++];
    if (b === LF) this.phase = "chunk-size";
    else if (b !== CR || ++this.#line > 1) this.phase = "opaque";
    return i;
  }

  #end(): void {
    this.phase = "start";
    this.events.end();
  }

  #onHead(): void {
    const text = latin1.decode(concat(this.#head, this.#headBytes));
    this.#head = [];
    const lines = text.split(/\r?\n/);
    const first = lines[0].split(" ");
    const lengths: string[] = [];
    const codings: string[] = [];
    let close = false;
    let upgrade = false;
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === "content-length") lengths.push(...value.split(",").map((v) => v.trim()));
      else if (name === "transfer-encoding") {
        codings.push(...value.split(",").map((v) => v.trim().toLowerCase()).filter(Boolean));
      } else if (name === "connection") {
        const tokens = value.toLowerCase().split(",").map((v) => v.trim());
        if (tokens.includes("close")) close = true;
        if (tokens.includes("upgrade")) upgrade = true;
      }
    }
    const head: MessageHead = { close };
    let noBody = false;
    if (this.kind === "request") {
      head.method = first[0];
      if (head.method === "CONNECT" || upgrade) return this.#opaque(head);
    } else {
      head.status = Number(first[1]);
      if (!Number.isInteger(head.status) || head.status === 101) return this.#opaque(head);
      if (head.status < 200) {
        // Interim (100 Continue): the final response follows.
        this.phase = "start";
        this.events.head(head);
        return;
      }
      noBody = head.status === 204 || head.status === 304 || this.bodiless();
    }
    this.events.head(head);
    if (noBody) return this.#end();
    if (codings.length > 0) {
      // Chunked last and no length beside it is the only framing trusted here; the rest is the server's call.
      if (lengths.length > 0 || codings[codings.length - 1] !== "chunked") {
        return void (this.phase = "opaque");
      }
      this.phase = "chunk-size";
      this.#line = 0;
      this.#lineText = "";
      return;
    }
    if (lengths.length > 0) {
      if (!lengths.every((v) => /^\d{1,15}$/.test(v) && v === lengths[0])) {
        return void (this.phase = "opaque");
      }
      this.#remaining = Number(lengths[0]);
      if (this.#remaining === 0) return this.#end();
      this.phase = "length";
      return;
    }
    if (this.kind === "request") return this.#end();
    this.phase = "eof";
  }

  #opaque(head: MessageHead): void {
    this.events.head(head);
    this.phase = "opaque";
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
