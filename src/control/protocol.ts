/** Wire framing of the control socket: newline-delimited JSON (docs/control-api.md). */

export const CONTROL_API_VERSION = 1;
export const MAX_LINE_BYTES = 1024 * 1024;

export type RequestId = number | string;

export interface ControlRequest {
  id: RequestId;
  cmd: string;
  args?: Record<string, unknown>;
}

export interface ControlErrorBody {
  code: string;
  message: string;
}

export type ControlResponse =
  | { id: RequestId | null; ok: true; result: unknown }
  | { id: RequestId | null; ok: false; error: ControlErrorBody }
  | { id: RequestId; progress: { done: number; total: number } };

/** An error a command handler throws to answer with a specific code. */
export class ControlError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Splits a byte stream into lines without holding more than MAX_LINE_BYTES of an unfinished line.
 * `onLine` gets each complete line; `onOverflow` is called once if a line grows past the limit.
 */
export class LineSplitter {
  private pending = '';

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onOverflow: () => void,
  ) {}

  push(chunk: string): void {
    let text = this.pending + chunk;
    let newline: number;
    while ((newline = text.indexOf('\n')) >= 0) {
      const line = text.slice(0, newline);
      text = text.slice(newline + 1);
      if (line.trim() !== '') this.onLine(line);
    }
    if (Buffer.byteLength(text) > MAX_LINE_BYTES) {
      this.pending = '';
      this.onOverflow();
      return;
    }
    this.pending = text;
  }
}
