/**
 * Loading the metadata at open: the newest valid checkpoint, then every later journal replayed in order up to
 * the first torn or corrupt record (which is truncated away). Also the epoch housekeeping shared with checkpoints.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { readCheckpointFile } from './checkpoint.js';
import { PoolError } from './errors.js';
import { CHECKPOINT_PREFIX, JOURNAL_PREFIX, TMP_SUFFIX, checkpointName, journalName } from './format.js';
import { fsyncDir } from '../util/durable-file.js';
import { scanJournal } from './journal.js';
import type { PoolMetadata } from './metadata.js';
import { replayRecord } from './records.js';

export interface RecoveryReport {
  checkpointEpoch: number;
  /** checkpoints that were skipped as unusable, with the reason */
  badCheckpoints: Array<{ epoch: number; reason: string }>;
  journals: Array<{ epoch: number; records: number; bytes: number; truncatedAt?: number; reason?: string }>;
  recordsReplayed: number;
  /** the previous run ended with a clean close */
  cleanShutdown: boolean;
  removedTmpFiles: string[];
}

export interface RecoveredMetadata {
  meta: PoolMetadata;
  lastSeq: number;
  /** every free chunk is known to read as zeros */
  clean: boolean;
  /** the highest epoch number present in the directory */
  maxEpoch: number;
  report: RecoveryReport;
}

interface EpochFiles {
  checkpoints: number[];
  journals: number[];
  tmp: string[];
}

export function listEpochFiles(dir: string): EpochFiles {
  const out: EpochFiles = { checkpoints: [], journals: [], tmp: [] };
  for (const name of fs.readdirSync(dir)) {
    if (name.endsWith(TMP_SUFFIX)) {
      if (name.startsWith(CHECKPOINT_PREFIX) || name.startsWith(JOURNAL_PREFIX)) out.tmp.push(name);
      continue;
    }
    const m = /^(checkpoint|journal)\.(\d+)$/.exec(name);
    if (!m) continue;
    (m[1] === 'checkpoint' ? out.checkpoints : out.journals).push(Number(m[2]));
  }
  out.checkpoints.sort((a, b) => a - b);
  out.journals.sort((a, b) => a - b);
  return out;
}

export function recoverMetadata(dir: string, poolUuid: string, chunkSize: number, log: Logger): RecoveredMetadata {
  const files = listEpochFiles(dir);
  const report: RecoveryReport = {
    checkpointEpoch: -1,
    badCheckpoints: [],
    journals: [],
    recordsReplayed: 0,
    cleanShutdown: false,
    removedTmpFiles: [],
  };
  for (const t of files.tmp) {
    // an interrupted checkpoint: never renamed, so never relied upon
    fs.rmSync(path.join(dir, t), { force: true });
    report.removedTmpFiles.push(t);
  }

  let loaded: ReturnType<typeof readCheckpointFile> | undefined;
  for (let k = files.checkpoints.length - 1; k >= 0 && !loaded; k--) {
    const epoch = files.checkpoints[k];
    try {
      loaded = readCheckpointFile(dir, epoch, poolUuid, chunkSize);
    } catch (err) {
      report.badCheckpoints.push({ epoch, reason: (err as Error).message });
      log.warn({ epoch, err: (err as Error).message }, 'skipping an unusable checkpoint');
    }
  }
  if (!loaded) {
    throw new PoolError(
      'ECORRUPT',
      `pool ${dir}: no usable checkpoint` +
        (report.badCheckpoints.length ? ` (${report.badCheckpoints.map((b) => b.reason).join('; ')})` : ''),
    );
  }
  report.checkpointEpoch = loaded.epoch;
  const { meta } = loaded;
  let lastSeq = loaded.lastSeq;

  for (const epoch of files.journals) {
    if (epoch < loaded.epoch) continue;
    const file = path.join(dir, journalName(epoch));
    const scan = scanJournal(file, epoch, poolUuid, lastSeq, (rec) => replayRecord(meta, rec));
    lastSeq = scan.lastSeq;
    report.recordsReplayed += scan.records;
    const entry: RecoveryReport['journals'][number] = { epoch, records: scan.records, bytes: scan.fileSize };
    if (scan.stopReason !== undefined) {
      entry.reason = scan.stopReason;
      if (scan.validEnd > 0 && scan.validEnd < scan.fileSize) {
        fs.truncateSync(file, scan.validEnd);
        entry.truncatedAt = scan.validEnd;
      }
      log.warn(
        { journal: journalName(epoch), records: scan.records, truncatedAt: entry.truncatedAt, reason: scan.stopReason },
        'journal tail discarded (torn or corrupt records after the last valid one)',
      );
    }
    report.journals.push(entry);
  }
  report.cleanShutdown = loaded.clean && report.recordsReplayed === 0;
  const maxEpoch = Math.max(0, ...files.checkpoints, ...files.journals);
  return { meta, lastSeq, clean: report.cleanShutdown, maxEpoch, report };
}

/** Deletes the checkpoints and journals of epochs older than `keep` (after checkpoint.<keep> is durable). */
export function removeOlderEpochs(dir: string, keep: number): void {
  const files = listEpochFiles(dir);
  let removed = false;
  for (const e of files.checkpoints) {
    if (e < keep) {
      fs.rmSync(path.join(dir, checkpointName(e)), { force: true });
      removed = true;
    }
  }
  for (const e of files.journals) {
    if (e < keep) {
      fs.rmSync(path.join(dir, journalName(e)), { force: true });
      removed = true;
    }
  }
  if (removed) fsyncDir(dir);
}
