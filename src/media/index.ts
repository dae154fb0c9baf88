/** The media layer's public surface: where backup streams go (docs/media.md). The backup code uses the stream functions. */
export { openWriteStream, openReadStream, listFiles, openMedium } from './stream.js';
export type { Medium, OpenMediumOptions, WriteStreamOptions } from './stream.js';
export { parseMediaTarget, checkRecordSize, holdsSeveralFiles, DEFAULT_RECORD_SIZE, MAX_RECORD_SIZE } from './target.js';
export type { MediaTarget, PipeTarget, FileTarget, TapTarget, TapeTarget } from './target.js';
export { MediaError, MediumFullError, TruncatedMediumError, CorruptMediumError } from './errors.js';
export type { MediaErrorCode, FileEnding } from './errors.js';
export type {
  MediumKind,
  OpenMode,
  RecordMedium,
  ByteSink,
  ByteSource,
  MediaStreamWriter,
  MediaStreamReader,
  ListedFile,
} from './types.js';
export { PlainFileMedium, PipeMedium } from './file.js';
export { TapImage } from './tap.js';
export { TapeDrive } from './tape.js';
