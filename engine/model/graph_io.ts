// Input and output names of the step graph, shared with the runner that feeds them.

export const IO = {
  inputIds: "input_ids",
  prevIds: "prev_ids",
  idSrc: "id_src",
  cuSeqlens: "cu_seqlens",
  pastSeqlens: "past_seqlens",
  blockTable: "block_table",
  attnMeta: "attn_meta",
  sampleRows: "sample_rows",
  keyCache: (i: number) => `key_cache_${i}`,
  valueCache: (i: number) => `value_cache_${i}`,
  logits: "logits",
  nextIds: "next_ids",
} as const;
