/** The benchmark's output: one JSON line per case, the value to 4 significant digits (see the package README). */
export function emit(c: string, value: number, unit: string, refs: object = {}): void {
  console.log(JSON.stringify({ case: c, value: Number(value.toPrecision(4)), unit, refs }));
}
