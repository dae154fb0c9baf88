/**
 * Compiles src/nbd/*.ts to JavaScript for child processes of the tests (stdio mode, socket activation):
 * vitest transpiles TypeScript only inside its own process. The output goes to
 * node_modules/.cache/thinvault-nbd-test/<hash of the sources>/, so it is rebuilt only when src/nbd changes,
 * never touches dist/, and resolves `pino` from the project's node_modules.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './nbd-harness.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Returns the directory holding server.js and the rest of src/nbd compiled. */
export async function buildNbdForChildren(): Promise<string> {
  const srcDir = path.join(REPO_ROOT, 'src', 'nbd');
  const files = fs
    .readdirSync(srcDir)
    .filter((f) => f.endsWith('.ts'))
    .sort();
  const hash = createHash('sha256');
  for (const f of files) hash.update(f).update(fs.readFileSync(path.join(srcDir, f)));
  const out = path.join(REPO_ROOT, 'node_modules', '.cache', 'thinvault-nbd-test', hash.digest('hex').slice(0, 16));
  if (fs.existsSync(path.join(out, 'server.js'))) return out;

  const tmp = `${out}.tmp-${process.pid}-${Date.now()}`;
  const tsc = path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const result = await run(
    process.execPath,
    [
      tsc,
      '--outDir', tmp,
      '--rootDir', srcDir,
      '--module', 'NodeNext',
      '--moduleResolution', 'NodeNext',
      '--target', 'ES2022',
      '--strict',
      '--skipLibCheck',
      '--esModuleInterop',
      '--types', 'node',
      ...files.map((f) => path.join(srcDir, f)),
    ],
    120_000,
  );
  if (!fs.existsSync(path.join(tmp, 'server.js'))) {
    throw new Error(`compiling src/nbd failed (${result.code}): ${result.stdout}${result.stderr}`);
  }
  // node_modules/ is a package boundary: say explicitly that these files are ES modules
  fs.writeFileSync(path.join(tmp, 'package.json'), '{ "type": "module" }\n');
  try {
    fs.renameSync(tmp, out);
  } catch {
    fs.rmSync(tmp, { recursive: true, force: true }); // a parallel test file won the race; its copy is the same
  }
  return out;
}
