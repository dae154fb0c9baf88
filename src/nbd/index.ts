/** Public surface of the NBD protocol layer. */
export { NbdServer, systemdListenFds } from './server.js';
export type { ConnectionInfo, NbdServerOptions, StreamPair } from './server.js';
export * from './export.js';
