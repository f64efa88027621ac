// A small graph-building DSL over proto.ts: names values, counts nodes, collects weights.

import {
  type AttrValue,
  encodeModel,
  type NodeDef,
  type TensorDef,
  TensorType,
  type ValueDef,
} from "./proto.ts";

export { TensorType };

/** A weight fed as a graph input: the graph holds its name, type and shape, never its bytes. */
export interface WeightSpec {
  name: string;
  type: TensorType;
  dims: number[];
}

/** The external data file name the model refers to (onnxruntime-web is handed the bytes under it). */
export const EXTERNAL_DATA_NAME = "weights.bin";

export class GraphBuilder {
  readonly nodes: NodeDef[] = [];
  readonly initializers: TensorDef[] = [];
  readonly inputs: ValueDef[] = [];
  readonly outputs: ValueDef[] = [];
  /** Weights declared as graph inputs (weightInput); the caller feeds their bytes. */
  readonly weightInputs: WeightSpec[] = [];
  private counter = 0;
  private constCache = new Map<string, string>();

  input(name: string, type: TensorType, dims: (number | string)[]): string {
    this.inputs.push({ name, type, dims });
    return name;
  }

  output(name: string, type: TensorType, dims: (number | string)[]) {
    this.outputs.push({ name, type, dims });
  }

  weight(name: string, type: TensorType, dims: number[], raw: Uint8Array): string {
    this.initializers.push({ name, type, dims, raw });
    return name;
  }

  /** A weight the caller feeds (a graph input), so that several sessions can share one copy on the GPU. */
  weightInput(name: string, type: TensorType, dims: number[]): string {
    this.inputs.push({ name, type, dims });
    this.weightInputs.push({ name, type, dims });
    return name;
  }

  /** Small constants are deduplicated by value so repeated shapes/axes cost one initializer. */
  constI64(values: number[], dims = [values.length]): string {
    return this.constant("i64", values, dims, TensorType.INT64, () => {
      const a = new BigInt64Array(values.map((v) => BigInt(v)));
      return new Uint8Array(a.buffer);
    });
  }

  constI32(values: number[], dims = [values.length]): string {
    return this.constant(
      "i32",
      values,
      dims,
      TensorType.INT32,
      () => new Uint8Array(Int32Array.from(values).buffer),
    );
  }

  constF32(values: number[], dims = [values.length]): string {
    return this.constant(
      "f32",
      values,
      dims,
      TensorType.FLOAT,
      () => new Uint8Array(Float32Array.from(values).buffer),
    );
  }

  private constant(kind: string, values: number[], dims: number[], type: TensorType, raw: () => Uint8Array) {
    const key = `${kind}:${dims.join("x")}:${values.join(",")}`;
    let name = this.constCache.get(key);
    if (!name) {
      name = `const_${kind}_${this.constCache.size}`;
      this.weight(name, type, dims, raw());
      this.constCache.set(key, name);
    }
    return name;
  }

  /** Adds a node; returns its output names (`nOut` of them). */
  op(
    op: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { domain?: string; nOut?: number; name?: string } = {},
  ): string[] {
    const base = opts.name ?? `${op}_${this.counter++}`;
    const nOut = opts.nOut ?? 1;
    const outputs = Array.from({ length: nOut }, (_, i) => (nOut === 1 ? base : `${base}:${i}`));
    this.nodes.push({ op, domain: opts.domain, inputs, outputs, name: base, attrs });
    return outputs;
  }

  /** Single-output shorthand. */
  op1(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, domain?: string): string {
    return this.op(op, inputs, attrs, { domain })[0];
  }

  encode(name: string): Uint8Array {
    return this.encodeSplit(name, Infinity).model;
  }

  /**
   * Encodes the model with every initializer of at least `minExternalBytes` moved to one external
   * data blob (ONNX external data, location EXTERNAL_DATA_NAME). A model proto cannot exceed 2 GiB,
   * and onnxruntime-web uploads external weights straight to the GPU instead of through its wasm heap.
   * Weight inputs are listed in `weights`; their bytes are nowhere in the model.
   */
  encodeSplit(
    name: string,
    minExternalBytes: number,
  ): { model: Uint8Array; data: Uint8Array; weights: WeightSpec[] } {
    let size = 0;
    const align = (n: number) => Math.ceil(n / 64) * 64;
    const initializers = this.initializers.map((t) => {
      // INT64 initializers are shapes and axes, which onnxruntime must read while it loads the graph.
      if (t.raw.length < minExternalBytes || t.type === TensorType.INT64) return t;
      const external = { location: EXTERNAL_DATA_NAME, offset: size, length: t.raw.length };
      size = align(size + t.raw.length);
      return { ...t, external };
    });
    const data = new Uint8Array(size);
    for (const t of initializers) if (t.external) data.set(t.raw, t.external.offset);
    const model = encodeModel({
      name,
      nodes: this.nodes,
      initializers,
      inputs: this.inputs,
      outputs: this.outputs,
      opsets: { "": 21, "com.microsoft": 1 },
    });
    return { model, data, weights: this.weightInputs.map((w) => ({ ...w })) };
  }
}
