/**
 * One line of a package's benchmark output (JSON Lines, one object per case), shared by the benches of every package
 * (run from a clone, never published):
 *
 * - `case`, `value`, `unit`: what was measured (`value` null when the case failed, with `error`, or was `skipped`);
 * - `refs`: the anchors measured in the same run (numpy's rate, the f16 model's tokens/s, a share of agreeing tokens):
 *   numbers only (null for one that could not be measured here);
 * - `info`: the settings and context of the run that are not measurements (adapter, engine, flags, chosen options);
 * - `targets`: the constants the case is judged against (an issue's target, a paper's published number): written down,
 *   not measured;
 * - any other key: more of what the case measured (seconds, phases), as a package's README describes.
 */
export interface BenchLine {
  readonly case: string;
  readonly value: number | null;
  readonly unit?: string;
  readonly refs?: BenchRefs;
  readonly info?: Readonly<Record<string, unknown>>;
  readonly targets?: Readonly<Record<string, number>>;
  readonly skipped?: string;
  readonly error?: string;
  readonly [measured: string]: unknown;
}

/** A case's measured anchors: numbers, or null for one this run could not measure. */
export type BenchRefs = Readonly<Record<string, number | null>>;

/**
 * The JSON text of `line` (no newline; `refs` always present, `{}` when none). Throws when a ref or target is not a number: a setting or a constant among the
 * refs read as if measured (they go in `info` and `targets`).
 */
export function benchLine(line: BenchLine): string {
  for (const [group, values] of [
    ['refs', line.refs],
    ['targets', line.targets],
  ] as const)
    for (const [k, v] of Object.entries(values ?? {}))
      if (typeof v !== 'number' && !(group === 'refs' && v === null))
        throw new Error(`bench case ${line.case}: ${group}.${k} must be a number, got ${JSON.stringify(v)}`);
  const { case: name, value, unit, refs, ...rest } = line;
  return JSON.stringify({
    case: name,
    value,
    ...(unit !== undefined ? { unit } : {}),
    refs: refs ?? {},
    ...rest,
  });
}
