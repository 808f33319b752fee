// Member-set digests, the same values as the digest crate: the wrapping sum of the xxh3-64 of
// every member id (UTF-8) and the member count; 256 buckets by the hash's top byte.
import { xxh3_64 } from "./xxh3.js";
const M = (1n << 64n) - 1n;
const utf8 = new TextEncoder();
/** The hash of one member id. */
export function memberHash(id) {
    return xxh3_64(utf8.encode(id));
}
/** The bucket of a member hash: its top byte. */
export function bucketOfHash(hash) {
    return Number(hash >> 56n);
}
/** The digest of a set: wrapping sum of member hashes, and the member count. */
export class SetDigest {
    sum;
    count;
    constructor(sum = 0n, count = 0) {
        this.sum = sum;
        this.count = count;
    }
    static of(ids) {
        const d = new SetDigest();
        for (const id of ids)
            d.insertHash(memberHash(id));
        return d;
    }
    insertHash(h) {
        this.sum = (this.sum + h) & M;
        this.count += 1;
    }
    removeHash(h) {
        this.sum = (this.sum - h) & M;
        this.count -= 1;
    }
    equals(other) {
        return this.sum === other.sum && this.count === other.count;
    }
    /** `"<sum as 16 hex digits>:<count>"`, as the protocol carries it. */
    toWire() {
        return `${this.sum.toString(16).padStart(16, "0")}:${this.count}`;
    }
    static fromWire(text) {
        const m = /^([0-9a-f]{16}):(\d+)$/.exec(text);
        return m ? new SetDigest(BigInt(`0x${m[1]}`), Number(m[2])) : null;
    }
}
/** One digest per bucket and their total. */
export class BucketedDigest {
    buckets = Array.from({ length: 256 }, () => new SetDigest());
    total = new SetDigest();
    static of(ids) {
        const d = new BucketedDigest();
        for (const id of ids)
            d.insertHash(memberHash(id));
        return d;
    }
    insertHash(h) {
        this.buckets[bucketOfHash(h)].insertHash(h);
        this.total.insertHash(h);
    }
    removeHash(h) {
        this.buckets[bucketOfHash(h)].removeHash(h);
        this.total.removeHash(h);
    }
    /** The buckets whose digests differ from `other`'s. */
    differing(other) {
        const out = [];
        for (let b = 0; b < 256; b++)
            if (!this.buckets[b].equals(other.buckets[b]))
                out.push(b);
        return out;
    }
    /**
     * The compact wire form (standard base64): a 32-byte bitmap of the non-empty buckets
     * (bucket b is bit b % 8 of byte b / 8), then each one's sum (u64) and count (u32),
     * little-endian, in ascending order.
     */
    toWire() {
        const nonEmpty = this.buckets.flatMap((d, b) => (d.count !== 0 || d.sum !== 0n ? [b] : []));
        const bytes = new Uint8Array(32 + 12 * nonEmpty.length);
        const view = new DataView(bytes.buffer);
        nonEmpty.forEach((b, i) => {
            bytes[b >> 3] |= 1 << (b & 7);
            view.setBigUint64(32 + 12 * i, this.buckets[b].sum, true);
            view.setUint32(32 + 12 * i + 8, this.buckets[b].count, true);
        });
        return toBase64(bytes);
    }
    static fromWire(text) {
        let bytes;
        try {
            bytes = fromBase64(text);
        }
        catch {
            return null;
        }
        if (bytes.length < 32)
            return null;
        const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        const d = new BucketedDigest();
        let at = 32;
        for (let b = 0; b < 256; b++) {
            if ((bytes[b >> 3] & (1 << (b & 7))) === 0)
                continue;
            if (at + 12 > bytes.length)
                return null;
            const bucket = new SetDigest(view.getBigUint64(at, true), view.getUint32(at + 8, true));
            d.buckets[b] = bucket;
            d.total.sum = (d.total.sum + bucket.sum) & M;
            d.total.count += bucket.count;
            at += 12;
        }
        return at === bytes.length ? d : null;
    }
}
function toBase64(bytes) {
    let s = "";
    for (const b of bytes)
        s += String.fromCharCode(b);
    return btoa(s);
}
function fromBase64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++)
        out[i] = s.charCodeAt(i);
    return out;
}
