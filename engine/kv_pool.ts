// The paged KV pool: for each layer one GPU buffer of K and one of V, each
// [numBlocks + 1, blockSize, kvHeads, paddedHead] fp16, which the step graph's PagedAttention reads
// and writes in place. The buffers outlive any one session, so several sessions can share them.

import type { ModelConfig } from "./model/types.ts";
import { paddedHeadDim } from "./model/step_weights.ts";

export interface KvPool {
  /** Blocks the engine hands out; the buffers hold one more, reserved for the padding item (see ModelRunner.run). */
  numBlocks: number;
  blockSize: number;
  /** Bytes of one block in one buffer. */
  bytesPerBlock: number;
  /** Dims of every buffer. */
  dims: [number, number, number, number];
  /** Layer i's K at 2i, its V at 2i + 1. */
  buffers: GPUBuffer[];
}

type KvShape = Pick<ModelConfig, "numLayers" | "numKvHeads" | "headDim">;

/**
 * Blocks the engine can hand out from `kvCacheMb` (one more is reserved), each buffer at most
 * `bindLimit` bytes: what allocateKvPool allocates, known before the device is.
 */
export function kvPoolBlocks(
  cfg: KvShape,
  blockSize: number,
  kvCacheMb: number,
  bindLimit = Infinity,
): number {
  const bytesPerBlock = blockSize * cfg.numKvHeads * paddedHeadDim(cfg.headDim) * 2;
  const perBuffer = Math.floor((kvCacheMb * 2 ** 20) / (2 * cfg.numLayers));
  return Math.max(1, Math.floor(Math.min(perBuffer, bindLimit) / bytesPerBlock) - 1);
}

/** Allocates `kvCacheMb` of KV blocks, clamped to what the device can bind per buffer. */
export function allocateKvPool(
  device: GPUDevice,
  cfg: KvShape,
  blockSize: number,
  kvCacheMb: number,
): KvPool {
  const paddedHead = paddedHeadDim(cfg.headDim);
  const bytesPerBlock = blockSize * cfg.numKvHeads * paddedHead * 2;
  const bindLimit = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  const numBlocks = kvPoolBlocks(cfg, blockSize, kvCacheMb, bindLimit);
  const buffers = Array.from({ length: 2 * cfg.numLayers }, () =>
    device.createBuffer({
      size: (numBlocks + 1) * bytesPerBlock,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    }));
  return {
    numBlocks,
    blockSize,
    bytesPerBlock,
    dims: [numBlocks + 1, blockSize, cfg.numKvHeads, paddedHead],
    buffers,
  };
}
