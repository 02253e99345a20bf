import { benchLine, type BenchLine, type BenchRefs } from '../../../scripts/bench-line.js';

/**
 * The benchmark's output: one JSON line per case, the value to 4 significant digits (see the package README): `refs`
 * the anchors measured in the same run, `info` the case's settings (model shape, token counts).
 */
export function emit(
  c: string,
  value: number,
  unit: string,
  refs: BenchRefs = {},
  info?: BenchLine['info'],
): void {
  console.log(
    benchLine({ case: c, value: Number(value.toPrecision(4)), unit, refs, ...(info ? { info } : {}) }),
  );
}
