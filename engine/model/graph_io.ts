// Input and output names of the step and sampler graphs, shared with the runner that feeds them.

export const IO = {
  inputIds: "input_ids",
  prevIds: "prev_ids",
  idSrc: "id_src",
  cuSeqlens: "cu_seqlens",
  pastSeqlens: "past_seqlens",
  blockTable: "block_table",
  attnMeta: "attn_meta",
  sampleRows: "sample_rows",
  sampleU: "sample_u",
  invTemp: "inv_temp",
  keyCache: (i: number) => `key_cache_${i}`,
  valueCache: (i: number) => `value_cache_${i}`,
  logits: "logits",
  nextIds: "next_ids",
  sampledIds: "sampled_ids",
} as const;
