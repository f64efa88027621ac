// The KV block pool: tables grow only by the blocks they lack, free returns everything; committed
// blocks are found by their whole prefix, shared, and evicted least recently released first.

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { BlockManager } from "../../engine/block_manager.ts";

Deno.test("a table gains only the blocks its new positions need", () => {
  const bm = new BlockManager(8, 4);
  const table: number[] = [];
  assert(bm.cover(table, 1));
  assertEquals(table.length, 1);
  assert(bm.cover(table, 4)); // still inside the first block
  assertEquals(table.length, 1);
  assert(bm.cover(table, 5)); // position 4 starts block 2
  assertEquals(table.length, 2);
  assert(bm.cover(table, 13));
  assertEquals(table.length, 4);
  assertEquals([bm.numUsed, bm.numFree, bm.numBlocks], [4, 4, 8]);
  assertEquals(new Set(table).size, 4);
});

Deno.test("cover is all or nothing when the pool is short", () => {
  const bm = new BlockManager(3, 4);
  const a: number[] = [];
  const b: number[] = [];
  assert(bm.cover(a, 8));
  assert(!bm.canCover(b, 5));
  assert(!bm.cover(b, 5)); // needs 2, 1 free
  assertEquals(b, []);
  assertEquals(bm.numFree, 1);
  assertEquals(bm.capacity(a), 12);
  assertEquals(bm.capacity(b), 4);
  assert(bm.cover(b, 4));
  assertEquals(bm.numFree, 0);
});

Deno.test("free returns all of a table's blocks and empties it; used is zero at idle", () => {
  const bm = new BlockManager(6, 2);
  const a: number[] = [];
  const b: number[] = [];
  bm.cover(a, 5);
  bm.cover(b, 6);
  assertEquals(bm.numUsed, 6);
  bm.free(a);
  assertEquals(a, []);
  assertEquals(bm.numUsed, 3);
  // Freed blocks are reused, never handed to two tables.
  const c: number[] = [];
  assert(bm.cover(c, 6));
  assertEquals(c.filter((x) => b.includes(x)), []);
  bm.free(b);
  bm.free(c);
  assertEquals([bm.numUsed, bm.numFree], [0, 6]);
});

Deno.test("a double free is an error, not a silent corruption", () => {
  const bm = new BlockManager(2, 4);
  const a: number[] = [];
  bm.cover(a, 4);
  const copy = [...a];
  bm.free(a);
  assertThrows(() => bm.free(copy), /freed twice/);
});

Deno.test("bad sizes are rejected", () => {
  assertThrows(() => new BlockManager(0, 16), /numBlocks/);
  assertThrows(() => new BlockManager(4, 0), /blockSize/);
});

// ---- Prefix caching -------------------------------------------------------------------------------

/** A table of `tokens.length / blockSize` blocks, every one committed with its tokens. */
function committed(bm: BlockManager, tokens: number[]): number[] {
  const table: number[] = [];
  assert(bm.cover(table, tokens.length));
  for (let i = 0; i < table.length; i++) {
    assert(bm.commit(table, i, tokens.slice(i * bm.blockSize, (i + 1) * bm.blockSize)));
  }
  return table;
}

const at = (tokens: number[]) => (p: number) => tokens[p];

Deno.test("lookup finds the longest committed chain, block by block from position 0", () => {
  const bm = new BlockManager(8, 4);
  const a = committed(bm, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assertEquals(bm.numCached, 3);
  const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 99, 0, 0, 0, 0];
  assertEquals(bm.lookup(at(tokens), 4), a.slice(0, 2)); // the third block differs in its last token
  assertEquals(bm.lookup(at(tokens), 1), a.slice(0, 1)); // never more than asked
  assertEquals(bm.lookup(at([9, 2, 3, 4]), 1), []);
  // The same tokens after a different first block are different content: a block's key is its
  // whole prefix, not its own tokens.
  const b = committed(bm, [0, 0, 0, 0, 5, 6, 7, 8]);
  assertEquals(bm.lookup(at([0, 0, 0, 0, 5, 6, 7, 8]), 2), b);
  assertEquals(bm.lookup(at([1, 2, 3, 4, 5, 6, 7, 8]), 2), a.slice(0, 2));
  assertEquals(new Set([...a, ...b]).size, 5);
});

Deno.test("a lookup under a memo key answers as a fresh one while blocks are evicted, recommitted and extended", () => {
  let state = 7;
  const rand = (n: number) => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return Math.floor(state / 65536) % n; // the high bits: an LCG's low bits cycle fast
  };
  const bm = new BlockManager(12, 2);
  // Prompts over a small alphabet, so that they share prefixes and their blocks churn through the pool.
  const prompts = Array.from({ length: 6 }, () => Array.from({ length: 2 * (1 + rand(6)) }, () => rand(2)));
  const keys = prompts.map(() => ({}));
  const held: number[][] = [];
  let reused = 0;
  for (let round = 0; round < 400; round++) {
    const k = rand(prompts.length), tokens = prompts[k], max = rand(tokens.length / 2 + 1);
    const memoed = bm.lookup(at(tokens), max, keys[k]);
    assertEquals(memoed, bm.lookup(at(tokens), max), `round ${round}, prompt ${k}`);
    if (memoed.length > 0) reused++;
    // Churn: commit a prompt (sharing what is cached, evicting what the pool needs), or free one.
    if (held.length > 2 || (rand(2) === 0 && held.length > 0)) {
      bm.free(held.splice(rand(held.length), 1)[0]);
    } else {
      const p = prompts[rand(prompts.length)], table: number[] = [];
      const hit = bm.lookup(at(p), p.length / 2);
      if (!bm.canShareAndCover(hit, p.length)) continue;
      bm.share(table, hit);
      bm.cover(table, p.length);
      for (let i = hit.length; i < table.length; i++) bm.commit(table, i, p.slice(2 * i, 2 * i + 2));
      held.push(table);
    }
  }
  assert(reused > 50, `only ${reused} lookups found a cached prefix`);
});

Deno.test("shared blocks are counted once and stay held until their last holder frees them", () => {
  const bm = new BlockManager(6, 4);
  const a = committed(bm, [1, 2, 3, 4, 5, 6, 7, 8]);
  const hit = bm.lookup(at([1, 2, 3, 4, 5, 6, 7, 8]), 2);
  assertEquals(bm.sharingCost(hit), 0); // held by a: sharing them takes no free block
  const b: number[] = [];
  assert(bm.canShareAndCover(hit, 12));
  bm.share(b, hit);
  assert(bm.cover(b, 12));
  assertEquals([bm.numUsed, bm.numFree, bm.numCached], [3, 3, 2]);
  bm.free(a);
  assertEquals(bm.numUsed, 3); // b still holds a's blocks
  bm.free(b);
  assertEquals([bm.numUsed, bm.numFree, bm.numCached], [0, 6, 2]);
  // Cached blocks nobody holds cost a free block each to share.
  const again = bm.lookup(at([1, 2, 3, 4, 5, 6, 7, 8]), 2);
  assertEquals(again, hit);
  assertEquals(bm.sharingCost(again), 2);
  assert(bm.canShareAndCover(again, 24));
  assert(!bm.canShareAndCover(again, 25)); // 2 shared + 5 new > 6
  const c: number[] = [];
  bm.share(c, again);
  assertEquals([bm.numUsed, bm.numFree], [2, 4]);
  bm.free(c);
  assertThrows(() => bm.free([again[0]]), /freed twice/);
});

Deno.test("the pool takes never-cached blocks first, then evicts the least recently released", () => {
  const bm = new BlockManager(6, 2);
  const a = committed(bm, [1, 1, 2, 2]);
  const b = committed(bm, [3, 3, 4, 4]);
  const [a0, a1] = a, [b0, b1] = b;
  bm.free(a); // released last block first: a1 is older than a0
  bm.free(b);
  const c: number[] = [];
  assert(bm.cover(c, 4)); // the two plain free blocks
  assertEquals(c.filter((x) => [a0, a1, b0, b1].includes(x)), []);
  assertEquals(bm.numCached, 4);
  const d: number[] = [];
  assert(bm.cover(d, 4)); // evicts a1, then a0
  assertEquals(new Set(d), new Set([a0, a1]));
  assertEquals(bm.numCached, 2);
  assertEquals(bm.lookup(at([1, 1, 2, 2]), 2), []);
  assertEquals(bm.lookup(at([3, 3, 4, 4]), 2), [b0, b1]);
  // Sharing a cached block takes it off the eviction list; it goes back on, as the newest, when freed.
  const e: number[] = [];
  bm.share(e, [b0]);
  bm.free(e);
  bm.free(c);
  const f: number[] = [];
  assert(bm.cover(f, 6)); // c's two plain blocks, then b1 (older than b0 now)
  assertEquals(bm.lookup(at([3, 3, 4, 4]), 2), [b0]);
});

Deno.test("committing content another block holds swaps the table to that block and frees its own", () => {
  const bm = new BlockManager(6, 2);
  const a = committed(bm, [1, 2, 3, 4]);
  const b: number[] = [];
  assert(bm.cover(b, 5)); // computed the same prefix itself, before a was committed
  const own = [...b];
  assert(bm.commit(b, 0, [1, 2]));
  assert(bm.commit(b, 1, [3, 4]));
  assertEquals(b, [a[0], a[1], own[2]]);
  assertEquals([bm.numUsed, bm.numCached], [3, 2]);
  // Committing again is a no-op; the chain continues from the shared blocks.
  assert(bm.commit(b, 1, [3, 4]));
  bm.free(a);
  bm.free(b);
  assertEquals([bm.numUsed, bm.numFree], [0, 6]);
});

Deno.test("a block follows a committed parent or is not committed", () => {
  const bm = new BlockManager(4, 2);
  const t: number[] = [];
  bm.cover(t, 4);
  assert(!bm.commit(t, 1, [3, 4]), "its first block is not committed");
  assertEquals(bm.numCached, 0);
  assertThrows(() => bm.commit(t, 0, [1]), /needs 2 tokens/);
  assertThrows(() => bm.share(t, []), /empty table/);
});

Deno.test("with prefix caching off nothing is committed, found or shared", () => {
  const bm = new BlockManager(4, 2, { prefixCaching: false });
  const t: number[] = [];
  bm.cover(t, 4);
  assert(!bm.commit(t, 0, [1, 2]));
  assertEquals(bm.lookup(at([1, 2, 3, 4]), 2), []);
  assertEquals(bm.numCached, 0);
  bm.free(t);
  assertEquals(bm.numFree, 4);
});
