// A pool of fixed-size KV-cache blocks. A sequence's block table maps its positions to blocks:
// position p lives in block table[floor(p / blockSize)] at slot p % blockSize.

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  // LIFO so that recently freed (likely still cached) blocks are reused first.
  #free: number[];
  #inUse: Uint8Array;

  constructor(numBlocks: number, blockSize: number) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) {
      throw new Error(`numBlocks must be >= 1, got ${numBlocks}`);
    }
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new Error(`blockSize must be >= 1, got ${blockSize}`);
    }
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.#free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.#inUse = new Uint8Array(numBlocks);
  }

  get numFree(): number {
    return this.#free.length;
  }

  get numUsed(): number {
    return this.numBlocks - this.#free.length;
  }

  /** Blocks needed to hold positions [0, numTokens). */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** True when the pool can grow `table` to hold positions [0, numTokens). */
  canCover(table: readonly number[], numTokens: number): boolean {
    return this.blocksFor(numTokens) - table.length <= this.#free.length;
  }

  /** How many positions `table` could hold if it took every free block now. */
  capacity(table: readonly number[]): number {
    return (table.length + this.#free.length) * this.blockSize;
  }

  /**
   * Grows `table` so it holds positions [0, numTokens), taking only the blocks missing.
   * All or nothing: returns false and leaves `table` untouched when the pool is short.
   */
  cover(table: number[], numTokens: number): boolean {
    if (!this.canCover(table, numTokens)) return false;
    for (let missing = this.blocksFor(numTokens) - table.length; missing > 0; missing--) {
      const block = this.#free.pop()!;
      this.#inUse[block] = 1;
      table.push(block);
    }
    return true;
  }

  /** Returns every block of `table` to the pool and empties it. */
  free(table: number[]): void {
    for (const block of table) {
      // A double free would hand one block to two sequences later: fail loudly instead.
      if (this.#inUse[block] !== 1) throw new Error(`KV block ${block} freed twice or never allocated`);
      this.#inUse[block] = 0;
      this.#free.push(block);
    }
    table.length = 0;
  }
}
