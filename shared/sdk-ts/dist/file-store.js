// A file backend for Node: an append-only log of write batches, one JSON line each, so a write
// costs what it changes. Loading replays the log; a torn last line (a write cut short by a
// crash) is dropped. Once the log holds three times what is live, it is compacted: the live
// records are written to a file beside it, flushed, and renamed into place.
import { mkdir, open, readFile, rename, stat } from "node:fs/promises";
import { dirname } from "node:path";
/** The log is compacted once it holds this many times the live records (and at least this many lines' worth). */
const COMPACT_FACTOR = 3;
const COMPACT_MIN = 1000;
export class FileBackend {
    path;
    durable;
    data = new Map();
    log = null;
    /** Records written to the log since it was last compacted. */
    logged = 0;
    /** `durable`: each write is flushed to disk before it resolves (default true). */
    constructor(path, durable = true) {
        this.path = path;
        this.durable = durable;
    }
    async load() {
        this.data = new Map();
        let text = "";
        try {
            text = await readFile(this.path, "utf8");
        }
        catch (e) {
            if (e.code !== "ENOENT")
                throw e;
        }
        for (const line of text.split("\n")) {
            if (line === "")
                continue;
            let batch;
            try {
                batch = JSON.parse(line);
            }
            catch {
                break; // the end of the last write that finished
            }
            if (batch !== null && typeof batch === "object" && !Array.isArray(batch)) {
                // A whole-store snapshot, as earlier versions wrote the file.
                for (const [k, v] of Object.entries(batch))
                    this.data.set(k, v);
                continue;
            }
            if (!Array.isArray(batch))
                break;
            for (const [k, v] of batch) {
                if (v === null)
                    this.data.delete(k);
                else
                    this.data.set(k, v);
            }
        }
        // A clean file to append to, without a torn tail.
        await this.compact();
        return new Map(this.data);
    }
    async write(batch) {
        const line = [];
        for (const [k, v] of batch) {
            if (v === undefined)
                this.data.delete(k);
            else
                this.data.set(k, JSON.parse(JSON.stringify(v)));
            line.push([k, v === undefined ? null : v]);
        }
        this.logged += batch.length;
        if (!this.log || this.logged > COMPACT_FACTOR * Math.max(COMPACT_MIN, this.data.size)) {
            await this.compact();
            return;
        }
        // Another store compacted the same file (two instances on one path): what this one
        // appended would go to a file no one reads any more.
        const [mine, there] = await Promise.all([this.log.stat(), stat(this.path).catch(() => null)]);
        if (!there || there.ino !== mine.ino || there.dev !== mine.dev) {
            throw new Error(`${this.path} was replaced by another store: one store per file`);
        }
        await this.log.appendFile(`${JSON.stringify(line)}\n`);
        if (this.durable)
            await this.log.datasync();
    }
    /** Closes the log file (a later write opens it again). */
    async close() {
        await this.log?.close();
        this.log = null;
    }
    async compact() {
        await mkdir(dirname(this.path), { recursive: true });
        const tmp = `${this.path}.tmp`;
        const out = await open(tmp, "w");
        try {
            const records = [...this.data.entries()];
            // One line per thousand records keeps each line a reasonable size.
            for (let i = 0; i < records.length; i += 1000)
                await out.appendFile(`${JSON.stringify(records.slice(i, i + 1000))}\n`);
            await out.datasync();
        }
        finally {
            await out.close();
        }
        await rename(tmp, this.path);
        // The rename itself is made durable, or a power cut could bring back the old file.
        const dir = await open(dirname(this.path), "r");
        try {
            await dir.sync();
        }
        finally {
            await dir.close();
        }
        await this.log?.close();
        this.log = await open(this.path, "a");
        this.logged = this.data.size;
    }
}
