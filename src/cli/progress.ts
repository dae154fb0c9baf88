/**
 * Progress of long jobs (backups, restores, copies) on stderr: a cli-progress bar with bytes, rate and ETA on a
 * terminal; elsewhere (pipes, logs, CI) a plain line at every 10 % so that the output stays readable.
 */
import cliProgress from 'cli-progress';
import { formatSize } from '../util/size.js';

export interface ProgressReporter {
  update(done: number, total: number): void;
  stop(): void;
}

function rateAndEta(done: number, total: number, startedMs: number): { rate: string; eta: string } {
  const seconds = Math.max((Date.now() - startedMs) / 1000, 0.001);
  const perSecond = done / seconds;
  const left = perSecond > 0 ? (total - done) / perSecond : Infinity;
  return {
    rate: `${formatSize(Math.round(perSecond))}/s`,
    eta: Number.isFinite(left) ? `${Math.ceil(left)}s` : '?',
  };
}

export function progressReporter(label: string, stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  const started = Date.now();
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: `${label} [{bar}] {percentage}% {doneSize} of {totalSize}, {rate}, ETA {etaText}`,
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    let running = false;
    return {
      update(done, total) {
        const { rate, eta } = rateAndEta(done, total, started);
        const extra = { doneSize: formatSize(done), totalSize: formatSize(total), rate, etaText: eta };
        if (!running) {
          bar.start(total, done, extra);
          running = true;
        } else {
          bar.setTotal(total);
          bar.update(done, extra);
        }
      },
      stop() {
        if (running) bar.stop();
      },
    };
  }
  let lastDecile = -1;
  return {
    update(done, total) {
      const decile = total > 0 ? Math.floor((done / total) * 10) : 10;
      if (decile === lastDecile) return;
      lastDecile = decile;
      const { rate, eta } = rateAndEta(done, total, started);
      stream.write(`${label}: ${decile * 10}% ${formatSize(done)} of ${formatSize(total)}, ${rate}, ETA ${eta}\n`);
    },
    stop() {},
  };
}
