import type { Backend } from "./store.js";
export declare class FileBackend implements Backend {
    private path;
    private durable;
    private data;
    private log;
    /** Records written to the log since it was last compacted. */
    private logged;
    /** `durable`: each write is flushed to disk before it resolves (default true). */
    constructor(path: string, durable?: boolean);
    load(): Promise<Map<string, unknown>>;
    write(batch: Array<[string, unknown]>): Promise<void>;
    /** Closes the log file (a later write opens it again). */
    close(): Promise<void>;
    private compact;
}
