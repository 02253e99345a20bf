import { CalderaError } from '@caldera/core';

/**
 * The E8P12 codebook of QuIP# (algorithm brief §3.4): 2¹⁶ points of dimension 8, so one 16-bit code per 8
 * weights = 2 bits per weight. Every point is `±s + v` where `s = ¼` and `v` is a point of D̂8 = D8 + ½ (all
 * coordinates half-integers, even coordinate sum) taken from 256 "source" magnitude vectors with all sign
 * patterns that keep the coordinate sum even.
 *
 * Code layout (16 bits): high byte `a` = source vector, low byte `σ` = signs. With `p = popcount(σ) mod 2`
 * and `σ' = σ XOR p`: coordinate i of `source[a]` is negated when bit `π(i)` of σ' is set
 * (`π = [0,4,1,5,2,6,3,7]`), coordinate 7 is negated once more when the source's coordinate sum is odd, and
 * the shift is `−¼` when `p = 1`, else `+¼`.
 */

/** Input scale that minimises the MSE of E8P12 on unit-Gaussian data (QuIP#'s `opt_scale`). */
export const E8P_OPT_SCALE = 1.03;
/** Dimension of an E8P codeword. */
export const E8P_DIM = 8;

const PERM = [0, 4, 1, 5, 2, 6, 3, 7] as const;

/** The 29 extra source vectors of squared norm 12, as 2× their entries (brief §3.4, in order). */
const EXTRA_SOURCES = (
  '31113333 13113333 11313333 11133333 33313311 33313131 33311331 33313113 33311313 33311133 33133311 ' +
  '33133131 33131331 33133113 33131313 33131133 31333311 31333131 31331331 31333113 31331313 13331133 ' +
  '13333311 13333131 13331331 13333113 13331313 11331333 33113331'
).split(' ');

/** The 256 source magnitude vectors, row-major (256 × 8). Rows 0..226 sorted lexicographically, then the extras. */
function buildSources(): Float32Array {
  // Absolute-value patterns of D̂8 points with ‖x‖² ≤ 10: entries in {½, 3/2, 5/2}. Every such pattern occurs (the
  // sign of any coordinate can be chosen to fix the sum parity), so enumerate patterns directly.
  const patterns: number[][] = [];
  const vals = [0.5, 1.5, 2.5];
  const rec = (prefix: number[]) => {
    if (prefix.length === 8) {
      if (prefix.reduce((s, v) => s + v * v, 0) <= 10) patterns.push(prefix.slice());
      return;
    }
    for (const v of vals) {
      prefix.push(v);
      rec(prefix);
      prefix.pop();
    }
  };
  rec([]);
  // rec enumerates in lexicographic order already (vals ascending, first coordinate most significant).
  if (patterns.length !== 227)
    throw new CalderaError('E_VALUE', `E8P12: expected 227 patterns, got ${patterns.length}`);
  const src = new Float32Array(256 * 8);
  patterns.forEach((p, a) => src.set(p, a * 8));
  EXTRA_SOURCES.forEach((s, k) => {
    for (let i = 0; i < 8; i++) src[(227 + k) * 8 + i] = Number(s[i]) / 2;
  });
  return src;
}

/** Lazily built, immutable tables shared by encode and decode (a pure function of constants). */
interface E8PTables {
  sources: Float32Array; // 256 × 8 magnitudes
  oddSum: Uint8Array; // 1 when the source's coordinate sum is odd
  grid: Float32Array; // 65536 × 8 decoded codewords
  norm2: Float32Array; // 256 squared norms of the sources
  /** Source index by magnitude pattern key (digits of 2·m). */
  indexOf: Map<number, number>;
  /** The 7 permutation-closed magnitude multisets (sorted descending) among rows 0..226. */
  multisets: Float32Array[];
}

let tables: E8PTables | null = null;

function patternKey(m: ArrayLike<number>, off = 0): number {
  let k = 0;
  for (let i = 0; i < 8; i++) k = k * 8 + Math.round(2 * m[off + i]!);
  return k;
}

function getTables(): E8PTables {
  if (tables) return tables;
  const sources = buildSources();
  const oddSum = new Uint8Array(256);
  const norm2 = new Float32Array(256);
  const indexOf = new Map<number, number>();
  for (let a = 0; a < 256; a++) {
    let s = 0;
    let n2 = 0;
    for (let i = 0; i < 8; i++) {
      s += sources[a * 8 + i]!;
      n2 += sources[a * 8 + i]! ** 2;
    }
    oddSum[a] = Math.round(s) % 2;
    norm2[a] = n2;
    indexOf.set(patternKey(sources, a * 8), a);
  }
  const grid = new Float32Array(65536 * 8);
  const v = new Float32Array(8);
  for (let c = 0; c < 65536; c++) {
    decodeOne(c, sources, oddSum, v);
    grid.set(v, c * 8);
  }
  const seen = new Map<string, Float32Array>();
  for (let a = 0; a < 227; a++) {
    const m = Array.from(sources.subarray(a * 8, a * 8 + 8)).sort((x, y) => y - x);
    seen.set(m.join(','), Float32Array.from(m));
  }
  tables = { sources, oddSum, grid, norm2, indexOf, multisets: [...seen.values()] };
  return tables;
}

function popcount8(x: number): number {
  x = x - ((x >> 1) & 0x55);
  x = (x & 0x33) + ((x >> 2) & 0x33);
  return (x + (x >> 4)) & 0x0f;
}

function decodeOne(code: number, sources: Float32Array, oddSum: Uint8Array, out: Float32Array): void {
  const a = code >>> 8;
  const sigma = code & 0xff;
  const p = popcount8(sigma) & 1;
  const s2 = sigma ^ p;
  const shift = p === 1 ? -0.25 : 0.25;
  for (let i = 0; i < 8; i++) {
    let v = sources[a * 8 + i]!;
    if (i === 7 && oddSum[a] === 1) v = -v;
    if ((s2 >> PERM[i]!) & 1) v = -v;
    out[i] = v + shift;
  }
}

/** The 256 source magnitude vectors (256 × 8, row-major). Read-only view. */
export function e8pSources(): Float32Array {
  return getTables().sources;
}

/** All 65 536 codewords (65536 × 8, row-major; codeword c at `8c`). Built once, 2 MiB. Read-only view. */
export function e8pGrid(): Float32Array {
  return getTables().grid;
}

/** Decode 16-bit codes into `8·codes.length` values. */
export function e8pDecode(codes: Uint16Array, out = new Float32Array(codes.length * 8)): Float32Array {
  if (out.length < codes.length * 8)
    throw new CalderaError(
      'E_SHAPE',
      `e8pDecode: output has ${out.length} values, needs ${codes.length * 8}`,
    );
  const grid = getTables().grid;
  for (let k = 0; k < codes.length; k++) out.set(grid.subarray(codes[k]! * 8, codes[k]! * 8 + 8), k * 8);
  return out;
}

/**
 * Exact nearest codeword of each consecutive 8-vector of `x` (Euclidean distance). `x.length` must be a multiple
 * of 8. Fast exact search: for each of the two shifts, the best signed arrangement of each permutation-closed
 * magnitude multiset follows from sorting |y| (rearrangement inequality, with the even-sum parity handled by the
 * cheapest single flip); only the 29 non-permutation-closed sources are scanned. See `e8p.test.ts` for the proof
 * by comparison with exhaustive search.
 */
export function e8pEncode(x: ArrayLike<number>, out = new Uint16Array(x.length / 8)): Uint16Array {
  if (x.length % 8 !== 0)
    throw new CalderaError('E_SHAPE', `e8pEncode: length ${x.length} is not a multiple of 8`);
  const t = getTables();
  const y = new Float64Array(8);
  const ay = new Float64Array(8);
  const order = new Int32Array(8);
  const best = { dist: Infinity, code: 0 };
  for (let k = 0; k < x.length / 8; k++) {
    best.dist = Infinity;
    for (let p = 0; p < 2; p++) {
      const shift = p === 1 ? -0.25 : 0.25;
      for (let i = 0; i < 8; i++) {
        const v = x[k * 8 + i]!;
        if (!Number.isFinite(v))
          throw new CalderaError('E_VALUE', `e8pEncode: non-finite input ${v} at index ${k * 8 + i}`);
        y[i] = v - shift;
      }
      nearestUnshifted(y, ay, order, t, p, best);
    }
    out[k] = best.code;
  }
  return out;
}

/** Search the unshifted set for the point nearest to y; updates `best` when closer (distance includes ‖y‖²). */
function nearestUnshifted(
  y: Float64Array,
  ay: Float64Array,
  order: Int32Array,
  t: E8PTables,
  p: number,
  best: { dist: number; code: number },
): void {
  let y2 = 0;
  let negParity = 0;
  for (let i = 0; i < 8; i++) {
    const v = y[i]!;
    y2 += v * v;
    ay[i] = Math.abs(v);
    if (v < 0) negParity ^= 1;
    order[i] = i;
  }
  // indices sorted by |y| descending (insertion sort on 8 elements)
  for (let i = 1; i < 8; i++) {
    const oi = order[i]!;
    const key = ay[oi]!;
    let j = i - 1;
    while (j >= 0 && ay[order[j]!]! < key) {
      order[j + 1] = order[j]!;
      j--;
    }
    order[j + 1] = oi;
  }
  let bestD = best.dist;
  let bestM: Float32Array | null = null; // chosen multiset (sorted) or a source row
  let bestFlip = -1; // position in sorted order that gets the parity flip (-1: none)
  let bestSource = -1;
  for (const m of t.multisets) {
    let n2 = 0;
    let dot = 0;
    for (let i = 0; i < 8; i++) {
      n2 += m[i]! * m[i]!;
      dot += ay[order[i]!]! * m[i]!;
    }
    // required negative-count parity = (Σm) mod 2; sign(y) has negParity negatives (zeros count as positive).
    let msum = 0;
    for (let i = 0; i < 8; i++) msum += m[i]!;
    const need = Math.round(msum) % 2;
    if (need === negParity) {
      const d = y2 - 2 * dot + n2;
      if (d < bestD) {
        bestD = d;
        bestM = m;
        bestFlip = -1;
      }
    } else {
      // flip position j (sorted order) gets the smallest magnitude m[7]; the others keep sorted pairing.
      // cost_j = -2(Σ_{i<j} y(i)m(i) + Σ_{i>j} y(i)m(i-1)) + 2 y(j) m(7)
      let pref = 0;
      for (let j = 0; j < 8; j++) {
        let suf = 0;
        for (let i = j + 1; i < 8; i++) suf += ay[order[i]!]! * m[i - 1]!;
        const d = y2 - 2 * (pref + suf) + 2 * ay[order[j]!]! * m[7]! + n2;
        if (d < bestD) {
          bestD = d;
          bestM = m;
          bestFlip = j;
        }
        pref += ay[order[j]!]! * m[j]!;
      }
    }
  }
  for (let a = 227; a < 256; a++) {
    let dot = 0;
    let minProd = Infinity;
    let minI = 0;
    for (let i = 0; i < 8; i++) {
      const pr = ay[i]! * t.sources[a * 8 + i]!;
      dot += pr;
      if (pr < minProd) {
        minProd = pr;
        minI = i;
      }
    }
    const mismatch = t.oddSum[a]! !== negParity;
    const d = y2 - 2 * dot + t.norm2[a]! + (mismatch ? 4 * minProd : 0);
    if (d < bestD) {
      bestD = d;
      bestM = null;
      bestSource = a;
      bestFlip = mismatch ? minI : -1; // here a coordinate index, not a sorted position
    }
  }
  if (bestD >= best.dist) return;
  // Build the chosen signed point u, then its code.
  const u = new Float64Array(8);
  if (bestM) {
    if (bestFlip < 0) {
      for (let i = 0; i < 8; i++) u[order[i]!] = bestM[i]!;
    } else {
      for (let i = 0; i < 8; i++) {
        if (i < bestFlip) u[order[i]!] = bestM[i]!;
        else if (i > bestFlip) u[order[i]!] = bestM[i - 1]!;
        else u[order[i]!] = bestM[7]!;
      }
    }
    for (let i = 0; i < 8; i++) if (y[i]! < 0) u[i] = -u[i]!;
    if (bestFlip >= 0) u[order[bestFlip]!] = -u[order[bestFlip]!]!;
  } else {
    for (let i = 0; i < 8; i++)
      u[i] = y[i]! < 0 ? -t.sources[bestSource * 8 + i]! : t.sources[bestSource * 8 + i]!;
    if (bestFlip >= 0) u[bestFlip] = -u[bestFlip]!;
  }
  const a = bestM ? t.indexOf.get(patternKey(Array.from(u, Math.abs)))! : bestSource;
  let s2 = 0;
  for (let i = 0; i < 8; i++) {
    const base = i === 7 && t.oddSum[a] === 1 ? -1 : 1; // sign of decode's pre-negated v before flips
    const want = u[i]! < 0 ? -1 : 1;
    if (want !== base) s2 |= 1 << PERM[i]!;
  }
  const sigma = p === 1 ? s2 ^ 1 : s2;
  best.dist = bestD;
  best.code = (a << 8) | sigma;
}
