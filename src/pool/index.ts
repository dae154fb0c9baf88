/** The storage engine's public surface (the NBD adapter and the control socket use only this). */
export { Pool } from './pool.js';
export type { PoolInitOptions, PoolOpenOptions, PoolStats } from './pool.js';
export { Volume } from './volume.js';
export type { VolumeInfo } from './volume.js';
export { PoolError } from './errors.js';
export type { PoolErrorCode } from './errors.js';
export type { RecoveryReport } from './recovery.js';
export { VolumeFlag } from './volume-state.js';
export type { BackupChain, VolumeIdentity } from './volume-state.js';
export type { CloneOptions, CopyProgress } from './pool.js';
export type { VolumeKind } from './volume.js';
