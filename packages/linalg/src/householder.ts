/**
 * The Householder reflector `H = I − τ·v·vᵀ` that maps column j of `a` (row stride `ld`), rows o = j+1 … n−1, to
 * `β·e₁`: v (with v₀ = 1) goes into `v[0 … n−o)` and over `a[o+1 …, j]`, β into `e[j]`, τ into `taus[j]`. Returns
 * false (and sets `e[j] = α`, `τ = 0`: H = I) when the column is already zero below row o.
 */
export function columnReflector(
  a: Float64Array,
  ld: number,
  j: number,
  n: number,
  v: Float64Array,
  e: Float64Array,
  taus: Float64Array,
): boolean {
  const o = j + 1;
  const alpha = a[o * ld + j]!;
  let tail = 0;
  for (let i = o + 1; i < n; i++) tail = Math.max(tail, Math.abs(a[i * ld + j]!));
  if (tail === 0) {
    e[j] = alpha;
    taus[j] = 0;
    return false;
  }
  const scale = Math.max(Math.abs(alpha), tail);
  let ss = 0;
  for (let i = o; i < n; i++) {
    const t = a[i * ld + j]! / scale;
    ss += t * t;
  }
  const { beta, tau, inv, divisor } = reflectorOf(alpha, scale, ss);
  v[0] = 1;
  for (let i = o + 1; i < n; i++) {
    const vi = (a[i * ld + j]! / divisor) * inv;
    a[i * ld + j] = vi;
    v[i - o] = vi;
  }
  e[j] = beta;
  taus[j] = tau;
  return true;
}

/**
 * Below this largest magnitude a column's reflector is formed from the column divided by it (LAPACK's `dlarfg`
 * rescales below safmin/ε ≈ 2⁻⁹⁶⁹): from the values as they are, `α − β` is subnormal with few significant bits,
 * or 0 (`1/(α − β)` infinite: NaN in Q), and v and τ no longer make an orthogonal reflector.
 */
const TINY_COLUMN = 2 ** -969;

/**
 * The Householder reflector `H = I − τ·v·vᵀ` (v₀ = 1) with `H·x = β·e₀` of a column `x` whose first entry is `alpha`,
 * largest magnitude `scale` (> 0) and squared norm `scale²·s`: `beta`, `tau`, and each later entry of v is
 * `(xᵢ / divisor) · inv`. Above {@link TINY_COLUMN} `divisor` is 1 and the arithmetic is that of the column as it is
 * (`inv = 1/(α − β)`, `τ = (β − α)/β`); below it, that of the column divided by `scale`.
 */
export function reflectorOf(
  alpha: number,
  scale: number,
  s: number,
): { beta: number; tau: number; inv: number; divisor: number } {
  if (scale >= TINY_COLUMN) {
    const norm = scale * Math.sqrt(s);
    const beta = alpha >= 0 ? -norm : norm;
    return { beta, tau: (beta - alpha) / beta, inv: 1 / (alpha - beta), divisor: 1 };
  }
  const as = alpha / scale;
  const bs = as >= 0 ? -Math.sqrt(s) : Math.sqrt(s);
  return { beta: scale * bs, tau: (bs - as) / bs, inv: 1 / (as - bs), divisor: scale };
}

/**
 * The upper-triangular T of the compact WY form `H₀·H₁·…·H_{b−1} = I − V·T·Vᵀ` of reflectors with factors
 * `taus[j0 …)`, from `S = VᵀV` (row stride `lds`): `T[c,c] = τ_c`, `T[0:c, c] = −τ_c·T[0:c,0:c]·S[0:c, c]`, into `t`
 * (row stride `ldt`, zero below the diagonal on entry).
 */
export function compactWyT(
  taus: Float64Array,
  j0: number,
  b: number,
  s: Float64Array,
  lds: number,
  t: Float64Array,
  ldt: number,
): void {
  for (let c = 0; c < b; c++) {
    const tau = taus[j0 + c]!;
    t[c * ldt + c] = tau;
    if (tau === 0 || c === 0) continue;
    for (let p = 0; p < c; p++) {
      let sum = 0;
      for (let q = p; q < c; q++) sum += t[p * ldt + q]! * s[q * lds + c]!;
      t[p * ldt + c] = -tau * sum;
    }
  }
}
