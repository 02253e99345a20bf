import { build } from 'esbuild';
import { runInNewContext } from 'node:vm';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const entry = fileURLToPath(new URL('./index.ts', import.meta.url));

describe('browser build', () => {
  it('bundles for the browser without Node built-ins and runs in a context that has no Node globals', async () => {
    const out = await build({
      entryPoints: [entry],
      bundle: true,
      platform: 'browser',
      format: 'iife',
      globalName: 'core',
      write: false,
      logLevel: 'silent',
    });
    const code = out.outputFiles[0]!.text;
    expect(code).not.toMatch(/require\(["'](node:)?fs/);
    // A browser-like global scope: web APIs only, no process/require/Buffer.
    const ctx: Record<string, unknown> = { TextEncoder, TextDecoder, Blob, DataView, console };
    runInNewContext(`${code}\nglobalThis.core = core;`, ctx);
    const core = ctx.core as typeof import('./index.js');
    expect(ctx.process).toBeUndefined();
    const t = core.tensor('f32', [2, 2], [1, 2, 3, 4]);
    const bytes = await core.serializeSafetensors({ w: core.transpose(t) }, { metadata: { a: 'b' } });
    const r = await core.openSafetensors(new Blob([bytes as Uint8Array<ArrayBuffer>]));
    expect(Array.from((await r.readTensor('w')).data)).toEqual([1, 3, 2, 4]);
    expect(r.metadata).toEqual({ a: 'b' });
  });
});
