// @anchorage/sdk: the Anchorage client for browsers and Node.js.
export { Client, RequestError } from "./client.js";
export { BucketedDigest, SetDigest, bucketOfHash, memberHash } from "./digest.js";
export { xxh3_64 } from "./xxh3.js";
export { backoffDelay, BACKOFF_BASE_MS, BACKOFF_MAX_MS } from "./backoff.js";
export { IndexedDbBackend, MemoryBackend, Store } from "./store.js";
export * from "./protocol.js";
