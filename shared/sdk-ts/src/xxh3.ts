// XXH3-64 (seed 0 and seeded short inputs), as the digest crate (xxhash-rust) computes it:
// member hashes and set digests must be the same values in every client.

const M = (1n << 64n) - 1n;
const P32_1 = 0x9e3779b1n;
const P32_2 = 0x85ebca77n;
const P32_3 = 0xc2b2ae3dn;
const P64_1 = 0x9e3779b185ebca87n;
const P64_2 = 0xc2b2ae3d27d4eb4fn;
const P64_3 = 0x165667b19e3779f9n;
const P64_4 = 0x85ebca77c2b2ae63n;
const P64_5 = 0x27d4eb2f165667c5n;

// prettier-ignore
const SECRET = new Uint8Array([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
]);

const STRIPE_LEN = 64;
const SECRET_CONSUME_RATE = 8;
const SECRET_LASTACC_START = 7;
const SECRET_MERGEACCS_START = 11;
const SECRET_SIZE_MIN = 136;

function r32(b: Uint8Array, o: number): bigint {
  return BigInt((b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0);
}

function r64(b: Uint8Array, o: number): bigint {
  return r32(b, o) | (r32(b, o + 4) << 32n);
}

const mul = (a: bigint, b: bigint) => (a * b) & M;
const add = (a: bigint, b: bigint) => (a + b) & M;
const sub = (a: bigint, b: bigint) => (a - b) & M;
const rotl = (v: bigint, r: bigint) => ((v << r) | (v >> (64n - r))) & M;

function swap64(v: bigint): bigint {
  let out = 0n;
  for (let i = 0n; i < 8n; i++) out = (out << 8n) | ((v >> (8n * i)) & 0xffn);
  return out;
}

function swap32(v: bigint): bigint {
  return ((v & 0xffn) << 24n) | ((v & 0xff00n) << 8n) | ((v >> 8n) & 0xff00n) | ((v >> 24n) & 0xffn);
}

function mulFold(a: bigint, b: bigint): bigint {
  const p = a * b;
  return (p & M) ^ (p >> 64n);
}

function xxh64Avalanche(v: bigint): bigint {
  v ^= v >> 33n;
  v = mul(v, P64_2);
  v ^= v >> 29n;
  v = mul(v, P64_3);
  return v ^ (v >> 32n);
}

function avalanche(v: bigint): bigint {
  v ^= v >> 37n;
  v = mul(v, 0x165667919e3779f9n);
  return v ^ (v >> 32n);
}

function strongAvalanche(v: bigint, len: bigint): bigint {
  v ^= rotl(v, 49n) ^ rotl(v, 24n);
  v = mul(v, 0x9fb21c651e98df25n);
  v ^= add(v >> 35n, len);
  v = mul(v, 0x9fb21c651e98df25n);
  return v ^ (v >> 28n);
}

function mix16(input: Uint8Array, i: number, s: number, seed: bigint): bigint {
  const lo = r64(input, i) ^ add(r64(SECRET, s), seed);
  const hi = r64(input, i + 8) ^ sub(r64(SECRET, s + 8), seed);
  return mulFold(lo, hi);
}

function upTo16(input: Uint8Array, seed: bigint): bigint {
  const len = input.length;
  if (len > 8) {
    const flip1 = add(r64(SECRET, 24) ^ r64(SECRET, 32), seed);
    const flip2 = sub(r64(SECRET, 40) ^ r64(SECRET, 48), seed);
    const lo = r64(input, 0) ^ flip1;
    const hi = r64(input, len - 8) ^ flip2;
    return avalanche(add(add(add(BigInt(len), swap64(lo)), hi), mulFold(lo, hi)));
  }
  if (len >= 4) {
    seed ^= swap32(seed & 0xffffffffn) << 32n;
    const in1 = r32(input, 0);
    const in2 = r32(input, len - 4);
    const flip = sub(r64(SECRET, 8) ^ r64(SECRET, 16), seed);
    const keyed = add(in2, in1 << 32n) ^ flip;
    return strongAvalanche(keyed, BigInt(len));
  }
  if (len > 0) {
    const combo = (BigInt(input[0]) << 16n) | (BigInt(input[len >> 1]) << 24n) | BigInt(input[len - 1]) | (BigInt(len) << 8n);
    const flip = add(r32(SECRET, 0) ^ r32(SECRET, 4), seed);
    return xxh64Avalanche(combo ^ flip);
  }
  return xxh64Avalanche(seed ^ (r64(SECRET, 56) ^ r64(SECRET, 64)));
}

function upTo128(input: Uint8Array, seed: bigint): bigint {
  const len = input.length;
  let acc = mul(BigInt(len), P64_1);
  if (len > 32) {
    if (len > 64) {
      if (len > 96) {
        acc = add(acc, mix16(input, 48, 96, seed));
        acc = add(acc, mix16(input, len - 64, 112, seed));
      }
      acc = add(acc, mix16(input, 32, 64, seed));
      acc = add(acc, mix16(input, len - 48, 80, seed));
    }
    acc = add(acc, mix16(input, 16, 32, seed));
    acc = add(acc, mix16(input, len - 32, 48, seed));
  }
  acc = add(acc, mix16(input, 0, 0, seed));
  acc = add(acc, mix16(input, len - 16, 16, seed));
  return avalanche(acc);
}

function upTo240(input: Uint8Array, seed: bigint): bigint {
  const len = input.length;
  let acc = mul(BigInt(len), P64_1);
  const rounds = Math.floor(len / 16);
  let i = 0;
  for (; i < 8; i++) acc = add(acc, mix16(input, 16 * i, 16 * i, seed));
  acc = avalanche(acc);
  for (; i < rounds; i++) acc = add(acc, mix16(input, 16 * i, 16 * (i - 8) + 3, seed));
  acc = add(acc, mix16(input, len - 16, SECRET_SIZE_MIN - 17, seed));
  return avalanche(acc);
}

function accumulate(acc: bigint[], input: Uint8Array, i: number, s: number): void {
  for (let lane = 0; lane < 8; lane++) {
    const value = r64(input, i + 8 * lane);
    const key = value ^ r64(SECRET, s + 8 * lane);
    acc[lane ^ 1] = add(acc[lane ^ 1], value);
    acc[lane] = add(acc[lane], (key & 0xffffffffn) * (key >> 32n));
  }
}

function scramble(acc: bigint[], s: number): void {
  for (let lane = 0; lane < 8; lane++) {
    const v = (acc[lane] ^ (acc[lane] >> 47n)) ^ r64(SECRET, s + 8 * lane);
    acc[lane] = mul(v, P32_1);
  }
}

function long(input: Uint8Array): bigint {
  const acc = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];
  const len = input.length;
  const stripes = (SECRET.length - STRIPE_LEN) / SECRET_CONSUME_RATE;
  const block = STRIPE_LEN * stripes;
  const blocks = Math.floor((len - 1) / block);
  for (let b = 0; b < blocks; b++) {
    for (let s = 0; s < stripes; s++) accumulate(acc, input, b * block + s * STRIPE_LEN, s * SECRET_CONSUME_RATE);
    scramble(acc, SECRET.length - STRIPE_LEN);
  }
  const last = Math.floor((len - 1 - block * blocks) / STRIPE_LEN);
  for (let s = 0; s < last; s++) accumulate(acc, input, blocks * block + s * STRIPE_LEN, s * SECRET_CONSUME_RATE);
  accumulate(acc, input, len - STRIPE_LEN, SECRET.length - STRIPE_LEN - SECRET_LASTACC_START);
  let result = mul(BigInt(len), P64_1);
  for (let i = 0; i < 4; i++) {
    const s = SECRET_MERGEACCS_START + 16 * i;
    result = add(result, mulFold(acc[2 * i] ^ r64(SECRET, s), acc[2 * i + 1] ^ r64(SECRET, s + 8)));
  }
  return avalanche(result);
}

/** XXH3-64 of `input` with seed 0 (the default secret). */
export function xxh3_64(input: Uint8Array): bigint {
  const len = input.length;
  if (len <= 16) return upTo16(input, 0n);
  if (len <= 128) return upTo128(input, 0n);
  if (len <= 240) return upTo240(input, 0n);
  return long(input);
}
