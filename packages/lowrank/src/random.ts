import { assertObject, CalderaError, type Rng } from '@caldera/core';
import { latticeRound } from './codec.js';
import type { Decomposition } from './decomposition.js';
import { paddedSize } from './rotate.js';

/**
 * A synthetic CALDERA decomposition of an m×n layer, for kernel tests and speed benchmarks of runtimes: Hadamard
 * rotation with random signs, uniformly random 16-bit E8P12 codes for Q (2 bits per weight), and L, R of `rank`
 * rounded to 4-bit lattice codes from Gaussian values. It approximates no weight matrix, but has every part and the
 * exact storage cost of a real one, deterministically from `rng`, in a fraction of the time `caldera` takes.
 * `m` and `n` must be positive integers and `rank` an integer in [0, min(m, n)], as `caldera` allows (`E_VALUE`).
 */
export function randomDecomposition(m: number, n: number, rank: number, rng: Rng): Decomposition {
  assertObject(rng, 'randomDecomposition', 'rng', 'an Rng');
  for (const [name, v] of [
    ['m', m],
    ['n', n],
  ] as const)
    if (!Number.isSafeInteger(v) || v < 1)
      throw new CalderaError(
        'E_VALUE',
        `randomDecomposition: ${name} ${String(v)} must be a positive integer`,
      );
  if (!Number.isInteger(rank) || rank < 0 || rank > Math.min(m, n))
    throw new CalderaError(
      'E_VALUE',
      `randomDecomposition: rank ${String(rank)} must be an integer in [0, ${Math.min(m, n)}] for a ${m}×${n} layer`,
    );
  const mp = paddedSize(m, true);
  const np = paddedSize(n, true);
  const codes = new Uint16Array((mp * np) / 8);
  for (let i = 0; i < codes.length; i++) codes[i] = rng.nextU32() & 0xffff;
  const l = latticeRound(rng.fillNormal(new Float32Array(rank * mp)), 4).codes;
  const r = latticeRound(rng.fillNormal(new Float32Array(rank * np)), 4).codes;
  // as `caldera` counts it: Q codes and scale, each factor's two 2-bit planes and scale, f16 SU and SV
  const factorBits = rank > 0 ? 4 * rank * (mp + np) + 2 * 32 : 0;
  const bits = 2 * mp * np + 32 + factorBits + 16 * (mp + np);
  return {
    shape: [m, n],
    padded: [mp, np],
    rank,
    scale: 0.02,
    hadamard: true,
    su: rng.fillRademacher(new Float32Array(np)),
    sv: rng.fillRademacher(new Float32Array(mp)),
    q: { bits: 2, planes: [codes], scale: 0.3 },
    l: { kind: 'lattice', codes: l },
    r: { kind: 'lattice', codes: r },
    bitsPerWeight: bits / (m * n),
    paperBitsPerWeight: 2 + (rank * 4 * (m + n)) / (m * n),
    error: NaN, // it approximates no weight matrix: unknown, as for a checkpoint that records none
    errors: { LR: [], Q: [] },
    seed: 0,
  };
}
