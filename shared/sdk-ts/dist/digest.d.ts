/** The hash of one member id. */
export declare function memberHash(id: string): bigint;
/** The bucket of a member hash: its top byte. */
export declare function bucketOfHash(hash: bigint): number;
/** The digest of a set: wrapping sum of member hashes, and the member count. */
export declare class SetDigest {
    sum: bigint;
    count: number;
    constructor(sum?: bigint, count?: number);
    static of(ids: Iterable<string>): SetDigest;
    insertHash(h: bigint): void;
    removeHash(h: bigint): void;
    equals(other: SetDigest): boolean;
    /** `"<sum as 16 hex digits>:<count>"`, as the protocol carries it. */
    toWire(): string;
    static fromWire(text: string): SetDigest | null;
}
/** One digest per bucket and their total. */
export declare class BucketedDigest {
    readonly buckets: SetDigest[];
    readonly total: SetDigest;
    static of(ids: Iterable<string>): BucketedDigest;
    insertHash(h: bigint): void;
    removeHash(h: bigint): void;
    /** The buckets whose digests differ from `other`'s. */
    differing(other: BucketedDigest): number[];
    /**
     * The compact wire form (standard base64): a 32-byte bitmap of the non-empty buckets
     * (bucket b is bit b % 8 of byte b / 8), then each one's sum (u64) and count (u32),
     * little-endian, in ascending order.
     */
    toWire(): string;
    static fromWire(text: string): BucketedDigest | null;
}
