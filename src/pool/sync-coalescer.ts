/**
 * Coalesces durability requests for one file: `sync()` resolves after an fdatasync that covers every modification
 * completed before the call. That is one that started after the call, or, when `version()` (a counter the owner
 * bumps as each modification completes) has not moved since the running one started, the running one: nothing
 * completed in between, so it covers the same; and when it has not moved since the last successful sync started,
 * nothing at all (everything is durable already, as qemu does for flushes with no write since the last one). Requests arriving while one runs share the next one. The second
 * rule matters for bursts of flushes with no writes between them (fio sends one per free queue slot).
 */
export class SyncCoalescer {
  private running: Promise<void> | null = null;
  private runningVersion = -1;
  /** version() when the last successful sync started: everything up to it is durable */
  private durableVersion = -1;
  private nextRun: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | null = null;

  constructor(
    private readonly doSync: () => Promise<void>,
    private readonly version: () => number = () => -1,
  ) {}

  sync(): Promise<void> {
    const v = this.version();
    if (v >= 0 && v === this.durableVersion) return Promise.resolve();
    if (this.running === null) {
      this.running = this.start();
      return this.running;
    }
    if (v >= 0 && v === this.runningVersion) return this.running;
    if (this.nextRun === null) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.nextRun = { promise, resolve, reject };
    }
    return this.nextRun.promise;
  }

  private async start(): Promise<void> {
    const version = this.version();
    this.runningVersion = version;
    try {
      await this.doSync();
      if (version > this.durableVersion) this.durableVersion = version;
    } finally {
      queueMicrotask(() => this.finished());
    }
  }

  private finished(): void {
    this.running = null;
    const next = this.nextRun;
    if (next === null) return;
    this.nextRun = null;
    this.running = this.start();
    this.running.then(next.resolve, next.reject);
  }
}
