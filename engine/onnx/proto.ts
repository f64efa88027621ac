// A minimal protobuf writer for the subset of onnx.proto the graph builder emits.
// Field numbers follow onnx/onnx.proto (IR version 10).

export const enum TensorType {
  FLOAT = 1,
  UINT8 = 2,
  INT8 = 3,
  INT32 = 6,
  INT64 = 7,
  BOOL = 9,
  FLOAT16 = 10,
}

class Writer {
  private chunks: Uint8Array[] = [];
  private buf = new Uint8Array(256);
  private pos = 0;
  length = 0;

  private flushSmall() {
    if (this.pos > 0) {
      this.chunks.push(this.buf.slice(0, this.pos));
      this.pos = 0;
    }
  }
  private byte(b: number) {
    if (this.pos === this.buf.length) this.flushSmall();
    this.buf[this.pos++] = b;
    this.length++;
  }
  varint(v: number | bigint) {
    let n = BigInt.asUintN(64, BigInt(v));
    while (n >= 0x80n) {
      this.byte(Number(n & 0x7fn) | 0x80);
      n >>= 7n;
    }
    this.byte(Number(n));
  }
  tag(field: number, wire: number) {
    this.varint((field << 3) | wire);
  }
  bytes(field: number, data: Uint8Array) {
    this.tag(field, 2);
    this.varint(data.length);
    this.flushSmall();
    this.chunks.push(data);
    this.length += data.length;
  }
  string(field: number, s: string) {
    this.bytes(field, new TextEncoder().encode(s));
  }
  int(field: number, v: number | bigint) {
    this.tag(field, 0);
    this.varint(v);
  }
  float(field: number, v: number) {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    for (const x of b) this.byte(x);
  }
  message(field: number, w: Writer) {
    this.tag(field, 2);
    this.varint(w.length);
    this.flushSmall();
    this.chunks.push(...w.finishChunks());
    this.length += w.length;
  }
  finishChunks(): Uint8Array[] {
    this.flushSmall();
    return this.chunks;
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let off = 0;
    for (const c of this.finishChunks()) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

export type AttrValue = number | string | number[] | { float: number } | { floats: number[] };

export interface NodeDef {
  op: string;
  domain?: string;
  inputs: string[];
  outputs: string[];
  name: string;
  attrs?: Record<string, AttrValue>;
}

export interface TensorDef {
  name: string;
  type: TensorType;
  dims: number[];
  raw: Uint8Array;
  /** Stored outside the model proto, at this byte range of the external data file (see encodeModel). */
  external?: { location: string; offset: number; length: number };
}

export interface ValueDef {
  name: string;
  type: TensorType;
  dims: (number | string)[];
}

export interface GraphDef {
  name: string;
  nodes: NodeDef[];
  initializers: TensorDef[];
  inputs: ValueDef[];
  outputs: ValueDef[];
  opsets: Record<string, number>;
}

function attribute(name: string, v: AttrValue): Writer {
  const w = new Writer();
  w.string(1, name);
  if (typeof v === "string") {
    w.bytes(4, new TextEncoder().encode(v));
    w.int(20, 3);
  } else if (typeof v === "number") {
    if (!Number.isInteger(v)) throw new Error(`attribute ${name}: use {float} for non-integers`);
    w.int(3, v);
    w.int(20, 2);
  } else if (Array.isArray(v)) {
    for (const x of v) w.int(8, x);
    w.int(20, 7);
  } else if ("float" in v) {
    w.float(2, v.float);
    w.int(20, 1);
  } else {
    for (const x of v.floats) w.float(7, x);
    w.int(20, 6);
  }
  return w;
}

function valueInfo(v: ValueDef): Writer {
  const shape = new Writer();
  for (const d of v.dims) {
    const dim = new Writer();
    if (typeof d === "number") dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new Writer();
  tensorType.int(1, v.type);
  tensorType.message(2, shape);
  const type = new Writer();
  type.message(1, tensorType);
  const w = new Writer();
  w.string(1, v.name);
  w.message(2, type);
  return w;
}

function tensor(t: TensorDef): Writer {
  const w = new Writer();
  for (const d of t.dims) w.int(1, d);
  w.int(2, t.type);
  w.string(8, t.name);
  if (t.external) {
    const entry = (key: string, value: string) => {
      const e = new Writer();
      e.string(1, key);
      e.string(2, value);
      return e;
    };
    w.message(13, entry("location", t.external.location));
    w.message(13, entry("offset", String(t.external.offset)));
    w.message(13, entry("length", String(t.external.length)));
    w.int(14, 1); // data_location = EXTERNAL
  } else {
    w.bytes(9, t.raw);
  }
  return w;
}

export function encodeModel(g: GraphDef): Uint8Array {
  const graph = new Writer();
  for (const n of g.nodes) {
    const node = new Writer();
    for (const i of n.inputs) node.string(1, i);
    for (const o of n.outputs) node.string(2, o);
    node.string(3, n.name);
    node.string(4, n.op);
    for (const [k, v] of Object.entries(n.attrs ?? {})) node.message(5, attribute(k, v));
    if (n.domain) node.string(7, n.domain);
    graph.message(1, node);
  }
  graph.string(2, g.name);
  for (const t of g.initializers) graph.message(5, tensor(t));
  for (const v of g.inputs) graph.message(11, valueInfo(v));
  for (const v of g.outputs) graph.message(12, valueInfo(v));
  const model = new Writer();
  model.int(1, 10);
  model.string(2, "ragtime");
  for (const [domain, version] of Object.entries(g.opsets)) {
    const op = new Writer();
    op.string(1, domain);
    op.int(2, version);
    model.message(8, op);
  }
  model.message(7, graph);
  return model.finish();
}

/**
 * Model bytes that, appended to an encoded model, add these inputs and initializers to its graph:
 * protobuf merges a repeated occurrence of the (singular) graph field into the first, concatenating
 * its repeated fields. Graph variants that differ in a few small tensors then share one encoded body.
 */
export function encodeGraphAddition(add: { inputs?: ValueDef[]; initializers?: TensorDef[] }): Uint8Array {
  const graph = new Writer();
  for (const t of add.initializers ?? []) graph.message(5, tensor(t));
  for (const v of add.inputs ?? []) graph.message(11, valueInfo(v));
  const model = new Writer();
  model.message(7, graph);
  return model.finish();
}
