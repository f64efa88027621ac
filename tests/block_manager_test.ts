// The KV block pool: tables grow only by the blocks they lack, free returns everything.

import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import { BlockManager } from "../engine/block_manager.ts";

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
