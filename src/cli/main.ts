#!/usr/bin/env node
/**
 * Entry point of the `thinvault` binary. libuv sizes its thread pool once, at first use, from
 * UV_THREADPOOL_SIZE; the default of 4 lets a few fdatasync calls stall every queued pread/pwrite of the data
 * path, so the daemon asks for more before anything else loads (a value set by the user wins).
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
await import('./program.js');
