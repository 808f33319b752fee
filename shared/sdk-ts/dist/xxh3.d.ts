/** XXH3-64 of `input` with seed 0 (the default secret). */
export declare function xxh3_64(input: Uint8Array): bigint;
