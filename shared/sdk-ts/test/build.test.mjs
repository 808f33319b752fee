// The committed files are what their sources give: the protocol types are generated from the
// protocol crate's schema (which a Rust test keeps equal to the crate), and dist/ — what the
// edge serves to the chat page — is the TypeScript compiler's output of src/.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("src/protocol.ts is generated from protocol.schema.json", () => {
  execFileSync(process.execPath, [join(root, "scripts", "types.mjs"), "--check"], { stdio: "pipe" });
});

test("dist/ is the compiler's output of src/, and src/ type-checks against the protocol types", () => {
  const out = mkdtempSync(join(tmpdir(), "anchorage-sdk-dist-"));
  execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.json"), "--outDir", out], { stdio: "pipe" });
  const built = readdirSync(out).sort();
  assert.deepEqual(readdirSync(join(root, "dist")).sort(), built);
  for (const f of built) {
    assert.equal(readFileSync(join(root, "dist", f), "utf8"), readFileSync(join(out, f), "utf8"), `dist/${f} is stale: npm run build`);
  }
});
