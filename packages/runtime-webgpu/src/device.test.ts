import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CalderaError } from '@caldera/core';
import { e8pDecode } from '@caldera/quant';
import { createDevice } from './device.js';
import { e8pSourceWords } from './linear.js';

describe('without a GPU', () => {
  it('createDevice reports a missing WebGPU or adapter as CalderaError E_DEVICE', async () => {
    const noNavigator = await createDevice().catch((e: unknown) => e);
    expect(noNavigator).toBeInstanceOf(CalderaError);
    expect((noNavigator as CalderaError).code).toBe('E_DEVICE');
    const gpu = { requestAdapter: async () => null } as unknown as GPU;
    await expect(createDevice({ gpu })).rejects.toMatchObject({ code: 'E_DEVICE' });
  });

  it('the GPU source table reproduces every E8P12 codeword with the kernel’s decoding rule', () => {
    // the same arithmetic as decode8() in the WGSL, in TypeScript, against @caldera/quant's decoder
    const words = e8pSourceWords();
    const mag = (w: number, i: number) => (((w >>> (4 * i)) & 15) - 5) * 0.5;
    const codes = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const want = e8pDecode(codes);
    let bad = 0;
    for (let c = 0; c < 65536; c++) {
      const w = words[c >> 8]!;
      const sigma = c & 255;
      let pc = 0;
      for (let b = 0; b < 8; b++) pc += (sigma >> b) & 1;
      const par = pc & 1;
      const s2 = sigma ^ par;
      for (let i = 0; i < 8; i++) {
        const bit = (i >> 1) | ((i & 1) << 2);
        const v = ((s2 >> bit) & 1 ? -mag(w, i) : mag(w, i)) + (par ? -0.25 : 0.25);
        if (v !== want[c * 8 + i]) bad++;
      }
    }
    expect(bad).toBe(0);
  });

  it('bundles for the browser without Node built-ins', async () => {
    const out = await build({
      entryPoints: [fileURLToPath(new URL('./index.ts', import.meta.url))],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
    });
    const code = out.outputFiles[0]!.text;
    expect(code).not.toMatch(/require\(["'](node:)?(fs|path|worker_threads)/);
    expect(code).not.toMatch(/from ["']node:/);
    expect(code).toContain('unpack2x16float');
  });
});
