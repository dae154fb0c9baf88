/**
 * Coalesces durability requests for one file: `sync()` resolves after an fdatasync that *started* after the call.
 * Requests arriving while one runs share the next one.
 */
export class SyncCoalescer {
  private running: Promise<void> | null = null;
  private nextRun: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | null = null;

  constructor(private readonly doSync: () => Promise<void>) {}

  sync(): Promise<void> {
    if (this.running === null) {
      this.running = this.start();
      return this.running;
    }
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
    try {
      await this.doSync();
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
