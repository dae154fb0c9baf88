import { pino, type Logger } from 'pino';

/**
 * The daemon's logger: JSON lines on stderr (stdout may carry the NBD stream in --stdio mode).
 * Level from the argument, else THINVAULT_LOG_LEVEL, else info.
 */
export function createLogger(level?: string): Logger {
  return pino(
    { name: 'thinvault', level: level ?? process.env.THINVAULT_LOG_LEVEL ?? 'info' },
    pino.destination({ dest: 2, sync: false }),
  );
}

/** A logger that discards everything, for library use and tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
