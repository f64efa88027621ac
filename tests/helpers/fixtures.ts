// Model files the tests read, named once so that moving a test or the shared folder touches one line.

/** The stories260K checkpoint (GGUF, all F32) in the shared read-only folder beside the repository. */
export const STORIES260K =
  new URL("../../../shared/models/stories260K/stories260K.gguf", import.meta.url).pathname;
