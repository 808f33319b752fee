// A file backend for Node: the records in one JSON file, replaced atomically on every write.
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
export class FileBackend {
    path;
    data = new Map();
    constructor(path) {
        this.path = path;
    }
    async load() {
        try {
            this.data = new Map(Object.entries(JSON.parse(await readFile(this.path, "utf8"))));
        }
        catch (e) {
            if (e.code !== "ENOENT")
                throw e;
        }
        return new Map(this.data);
    }
    async write(batch) {
        for (const [k, v] of batch) {
            if (v === undefined)
                this.data.delete(k);
            else
                this.data.set(k, JSON.parse(JSON.stringify(v)));
        }
        await mkdir(dirname(this.path), { recursive: true });
        const tmp = `${this.path}.tmp`;
        await writeFile(tmp, JSON.stringify(Object.fromEntries(this.data)));
        await rename(tmp, this.path);
    }
}
