/** The first wait's ceiling and the longest wait, as the protocol recommends (0.5 s to 20 s). */
export declare const BACKOFF_BASE_MS = 500;
export declare const BACKOFF_MAX_MS = 20000;
/**
 * How long to wait before connection attempt number `failures` (1 for the first retry): a
 * uniformly random time up to min(max, base · 2^(failures-1)), and at least `retryAfterMs`
 * when the server sent a `Retry-After` or a `retry_after_ms`.
 */
export declare function backoffDelay(failures: number, retryAfterMs?: number, random?: () => number, baseMs?: number, maxMs?: number): number;
