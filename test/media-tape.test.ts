/**
 * Tape drive targets. No drive is available here: what is tested is that things which are not tapes, and devices
 * that do not exist, are refused with a clear message before anything is written. The record cutting and the
 * full-medium handling a drive uses are shared with tap images and tested there (media-tap.test.ts).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { listFiles, openReadStream, openWriteStream, parseMediaTarget } from '../src/media/index.js';

let dir: string;
let regular: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinvault-media-tape-'));
  regular = path.join(dir, 'not-a-tape');
  fs.writeFileSync(regular, 'some bytes');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('tape: targets that are not tapes', () => {
  it.each([['a regular file'], ['/dev/null'], ['/dev/zero']])('%s is refused as not a tape device', async (which) => {
    const device = which === 'a regular file' ? regular : which;
    const target = parseMediaTarget(`tape:${device}`);
    const expected = {
      code: 'ENOTTAPE',
      message: `${device} is not a tape device (MTIOCGET: Inappropriate ioctl for device)`,
    };
    await expect(openWriteStream(target)).rejects.toMatchObject(expected);
    await expect(openWriteStream(target, { overwrite: true })).rejects.toMatchObject(expected);
    await expect(openReadStream(target)).rejects.toMatchObject(expected);
    await expect(listFiles(target, 64)).rejects.toMatchObject(expected);
  });

  it('leaves a regular file given as a tape untouched', async () => {
    await openWriteStream(parseMediaTarget(`tape:${regular}`)).catch(() => {});
    expect(fs.readFileSync(regular, 'utf8')).toBe('some bytes');
  });

  it('a missing device is named', async () => {
    const missing = path.join(dir, 'nst9');
    const target = parseMediaTarget(`tape:${missing}`);
    const expected = { code: 'ENOENT', message: `no such device ${missing}` };
    await expect(openWriteStream(target)).rejects.toMatchObject(expected);
    await expect(openReadStream(target)).rejects.toMatchObject(expected);
    await expect(listFiles(target, 64)).rejects.toMatchObject(expected);
  });

  it('a file number on a write target is refused before the device is opened', async () => {
    await expect(openWriteStream(parseMediaTarget('tape:/dev/nst0#2'))).rejects.toMatchObject({ code: 'EINVAL' });
  });
});
