// A pool of fixed-size KV-cache blocks. A sequence's block table maps its positions to blocks:
// position p lives in block table[floor(p / blockSize)] at slot p % blockSize.
//
// Prefix caching: a full block whose KV is written (or dispatched: see Scheduler) can be committed
// under its content, which is the exact chain of tokens from position 0 to its end. A committed
// block is reference-counted: any number of sequences may hold it, and one that nobody holds stays
// cached, evictable, until the pool needs a block (least recently released first). Blocks without
// committed content go to a plain free list and are always taken before a cached one is evicted.
//
// Content is identified exactly, not by hash alone: every committed block gets a fresh node id and
// records its parent's node id and its own tokens, and a lookup checks both. The hash (seeded per
// pool, so colliding prompts cannot be crafted) only finds the candidate; a collision costs a miss.

export interface BlockManagerOptions {
  /** Cache full blocks by content and share them between sequences (default true). */
  prefixCaching?: boolean;
}

/** Node id of the empty prefix, the parent of every sequence's first block. */
const ROOT = 1;

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly prefixCaching: boolean;
  // LIFO so that recently freed (likely still cached) blocks are reused first.
  #free: number[];
  /** Committed blocks nobody holds, least recently released first (Set keeps insertion order). */
  #evictable = new Set<number>();
  /** Holders of each block; a held block is never handed out again. */
  #refs: Int32Array;
  /** Node id of a committed block's content, 0 when it has none. */
  #node: Float64Array;
  #parent: Float64Array;
  #hash: Float64Array;
  /** Committed tokens, blockSize per block. */
  #tokens: Int32Array;
  /** Content hash -> the committed block holding it. */
  #index = new Map<number, number>();
  #nextNode = ROOT + 1;
  /** The last lookup under each memo key: the blocks found and their node ids then. */
  #lookups = new WeakMap<object, { blocks: number[]; nodes: number[] }>();
  #seed: number;

  constructor(numBlocks: number, blockSize: number, opts: BlockManagerOptions = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) {
      throw new Error(`numBlocks must be >= 1, got ${numBlocks}`);
    }
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new Error(`blockSize must be >= 1, got ${blockSize}`);
    }
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.prefixCaching = opts.prefixCaching ?? true;
    this.#free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.#refs = new Int32Array(numBlocks);
    this.#node = new Float64Array(numBlocks);
    this.#parent = new Float64Array(numBlocks);
    this.#hash = new Float64Array(numBlocks);
    this.#tokens = new Int32Array(this.prefixCaching ? numBlocks * blockSize : 0);
    this.#seed = crypto.getRandomValues(new Uint32Array(1))[0];
  }

  /** Blocks a table can take now: plain free ones and cached ones nobody holds. */
  get numFree(): number {
    return this.#free.length + this.#evictable.size;
  }

  /** Blocks held by at least one table. */
  get numUsed(): number {
    return this.numBlocks - this.numFree;
  }

  /** Blocks holding committed content, held or not (those not held are part of numFree). */
  get numCached(): number {
    return this.#index.size;
  }

  /** Blocks needed to hold positions [0, numTokens). */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** True when the pool can grow `table` to hold positions [0, numTokens). */
  canCover(table: readonly number[], numTokens: number): boolean {
    return this.blocksFor(numTokens) - table.length <= this.numFree;
  }

  /** How many positions `table` could hold if it took every free block now. */
  capacity(table: readonly number[]): number {
    return (table.length + this.numFree) * this.blockSize;
  }

  /**
   * Grows `table` so it holds positions [0, numTokens), taking only the blocks missing (plain free
   * ones first, then evicting cached ones). All or nothing: returns false and leaves `table`
   * untouched when the pool is short.
   */
  cover(table: number[], numTokens: number): boolean {
    if (!this.canCover(table, numTokens)) return false;
    for (let missing = this.blocksFor(numTokens) - table.length; missing > 0; missing--) {
      const block = this.#free.pop() ?? this.#evict();
      this.#refs[block] = 1;
      table.push(block);
    }
    return true;
  }

  /**
   * Releases every block of `table` and empties it. A committed block nobody else holds stays
   * cached; the table's last blocks are released first, so a prefix outlives its continuations.
   */
  free(table: number[]): void {
    for (let i = table.length - 1; i >= 0; i--) {
      const block = table[i];
      // A double free would hand one block to two sequences later: fail loudly instead.
      if (this.#refs[block] < 1) throw new Error(`KV block ${block} freed twice or never allocated`);
      if (--this.#refs[block] > 0) continue;
      if (this.#node[block] !== 0) this.#evictable.add(block);
      else this.#free.push(block);
    }
    table.length = 0;
  }

  /**
   * The longest run of committed blocks holding tokenAt(0 .. n * blockSize - 1), n <= maxBlocks,
   * as block ids in position order. Takes nothing: pass the result to share().
   *
   * With a `memo` key (a waiting sequence, looked up again every step), the run found for it last
   * time is reused as far as each of its blocks still holds the content it held then (its node id is
   * unchanged: node ids are never reused), and only the rest is hashed: the same answer for a few
   * comparisons instead of hashing every block. tokenAt must give the same tokens for every
   * position it gave before under that key.
   */
  lookup(tokenAt: (p: number) => number, maxBlocks: number, memo?: object): number[] {
    if (!this.prefixCaching) return [];
    const last = memo && this.#lookups.get(memo);
    let n = 0;
    while (last && n < last.blocks.length && n < maxBlocks && this.#node[last.blocks[n]] === last.nodes[n]) {
      n++;
    }
    const found = last ? last.blocks.slice(0, n) : [], nodes = last ? last.nodes.slice(0, n) : [];
    const bs = this.blockSize;
    const tokens = new Int32Array(bs);
    let parent = n > 0 ? nodes[n - 1] : ROOT;
    for (let i = n; i < maxBlocks; i++) {
      for (let j = 0; j < bs; j++) tokens[j] = tokenAt(i * bs + j);
      const block = this.#index.get(this.#hashOf(parent, tokens));
      if (block === undefined || !this.#holds(block, parent, tokens)) break;
      found.push(block);
      parent = this.#node[block];
      nodes.push(parent);
    }
    if (memo) this.#lookups.set(memo, { blocks: found.slice(), nodes });
    return found;
  }

  /** Free blocks that taking `blocks` (from lookup) would use up: those nobody holds. */
  sharingCost(blocks: readonly number[]): number {
    let n = 0;
    for (const b of blocks) if (this.#refs[b] === 0) n++;
    return n;
  }

  /** True when an empty table can take `blocks` (from lookup) and then grow to numTokens positions. */
  canShareAndCover(blocks: readonly number[], numTokens: number): boolean {
    return this.blocksFor(numTokens) - blocks.length <= this.numFree - this.sharingCost(blocks);
  }

  /** Appends `blocks` (from lookup, in order) to an empty table, holding each once more. */
  share(table: number[], blocks: readonly number[]): void {
    if (table.length !== 0) throw new Error("share() needs an empty table");
    for (const b of blocks) {
      if (this.#node[b] === 0) throw new Error(`KV block ${b} has no cached content to share`);
      if (this.#refs[b]++ === 0) this.#evictable.delete(b);
      table.push(b);
    }
  }

  /**
   * Commits table[i], whose every position's KV is written or dispatched, as holding `tokens`
   * after table[0 .. i-1] (committed before it). When another block already holds that content,
   * the table takes that one instead and its own goes back to the pool: the two are bit-identical
   * (see Scheduler). Returns false when the block cannot be committed (caching off, its parent
   * never was, or a hash collision), in which case later blocks of the table cannot be either.
   */
  commit(table: number[], i: number, tokens: ArrayLike<number>): boolean {
    if (!this.prefixCaching) return false;
    const bs = this.blockSize;
    if (tokens.length !== bs) throw new Error(`commit needs ${bs} tokens, got ${tokens.length}`);
    const block = table[i];
    if (this.#node[block] !== 0) return true; // shared from the cache: committed already
    const parent = i === 0 ? ROOT : this.#node[table[i - 1]];
    if (parent === 0) return false;
    const hash = this.#hashOf(parent, tokens);
    const existing = this.#index.get(hash);
    if (existing !== undefined) {
      if (!this.#holds(existing, parent, tokens)) return false;
      if (this.#refs[existing]++ === 0) this.#evictable.delete(existing);
      table[i] = existing;
      this.#release(block);
      return true;
    }
    this.#node[block] = this.#nextNode++;
    this.#parent[block] = parent;
    this.#hash[block] = hash;
    this.#tokens.set(tokens, block * bs);
    this.#index.set(hash, block);
    return true;
  }

  /** Drops one hold on a block with no committed content. */
  #release(block: number): void {
    if (--this.#refs[block] === 0) this.#free.push(block);
  }

  /** Takes the least recently released cached block out of the cache. */
  #evict(): number {
    const block: number = this.#evictable.values().next().value!;
    this.#evictable.delete(block);
    this.#index.delete(this.#hash[block]);
    this.#node[block] = 0;
    return block;
  }

  #holds(block: number, parent: number, tokens: ArrayLike<number>): boolean {
    if (this.#parent[block] !== parent) return false;
    const base = block * this.blockSize;
    for (let j = 0; j < tokens.length; j++) if (this.#tokens[base + j] !== tokens[j]) return false;
    return true;
  }

  /** 53 bits of two seeded 32-bit multiply-xorshift lanes over the parent node id and the tokens. */
  #hashOf(parent: number, tokens: ArrayLike<number>): number {
    let a = this.#seed ^ 0x9e3779b9, b = Math.imul(this.#seed, 0x85ebca6b) ^ 0x7f4a7c15;
    const mix = (x: number) => {
      a = Math.imul(a ^ x, 0xcc9e2d51);
      a = (a << 15) | (a >>> 17);
      b = Math.imul(b ^ x, 0x1b873593) + a;
      b = (b << 13) | (b >>> 19);
    };
    mix(parent >>> 0);
    mix(Math.floor(parent / 2 ** 32));
    for (let j = 0; j < tokens.length; j++) mix(tokens[j]);
    a = fmix32(a ^ tokens.length);
    b = fmix32(b ^ a);
    return (b >>> 0) * 2 ** 21 + (a >>> 11);
  }
}

/** Avalanche of a 32-bit lane. */
function fmix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return h ^ (h >>> 16);
}
