import type { Backend } from "./store.js";
export declare class FileBackend implements Backend {
    private path;
    private data;
    constructor(path: string);
    load(): Promise<Map<string, unknown>>;
    write(batch: Array<[string, unknown]>): Promise<void>;
}
