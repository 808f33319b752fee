// Reconnect waits: full-jitter exponential backoff, never shorter than the server asked for.
/** The first wait's ceiling and the longest wait, as the protocol recommends (0.5 s to 20 s). */
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_MAX_MS = 20_000;
/**
 * How long to wait before connection attempt number `failures` (1 for the first retry): a
 * uniformly random time up to min(max, base · 2^(failures-1)), and at least `retryAfterMs`
 * when the server sent a `Retry-After` or a `retry_after_ms`.
 */
export function backoffDelay(failures, retryAfterMs = 0, random = Math.random, baseMs = BACKOFF_BASE_MS, maxMs = BACKOFF_MAX_MS) {
    const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, Math.min(failures - 1, 30)));
    return Math.max(retryAfterMs, Math.floor(random() * ceiling));
}
