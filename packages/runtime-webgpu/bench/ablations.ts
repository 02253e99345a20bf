/**
 * Ablations (`--ablate a,b,…`): each loads the CALDERA model again with its WGSL edited (the results are wrong, the
 * time is what is measured), to tell what a kernel's time is spent on. Each edit keeps every binding in use (a
 * binding the shader no longer reads would leave the automatic layout); profile.ts reports an edit that matched no
 * shader (the WGSL it was written against has changed).
 */
export const ABLATIONS: Record<string, [RegExp | string, string][]> = {
  base: [],
  hk_const: [[/return hkb\[[^\]]*\];/g, 'return 1.0 + 0.0 * hkb[mb.hkOff];']],
  // the H_K mix in place (K = 1 and the written-out orders; others still mix per value from hkb)
  no_mix: [[/if \(mb\.K == 1u\) \{ mixK1\(lid, mb\); \}[^\n]*/g, 'if (mb.K == 0u) { mixK1(lid, mb); }']],
  // the H_K mix per value from the hkb table (rotatedAt's loop) instead of the written-out mixes (not an ablation: the
  // same results, the other form's time)
  mix_from_table: [
    [/return K == 1u \|\| [^;]*;/g, 'return K == 1u;'],
    [/else if \(mb\.K == \d+u\) \{ mixK/g, 'else if (mb.K == 0u) { mixK'],
  ],
  no_rhat: [['g0 < pr.G;', 'g0 < 0u;']],
  tables_const: [['tbl[lid] = tables.pairs[lid];', 'tbl[lid] = tables.pairs[0] + vec4<u32>(lid);']],
  no_butterflies: [
    [
      'fn rotateInPlace(lid: u32, mb: M, transposeH: u32) {\n  butterflies(lid, mb);',
      'fn rotateInPlace(lid: u32, mb: M, transposeH: u32) {',
    ],
  ],
  e8p_no_table: [
    [
      'fn pairs(a: u32) -> vec4<u32> { return tbl[a]; }',
      'fn pairs(a: u32) -> vec4<u32> { return vec4<u32>(a); }',
    ],
  ],
  e8p_no_x: [
    [
      'fn x8(xo: u32) -> Activations { return activations(x[xo >> 2u], x[(xo >> 2u) + 1u]); }',
      'fn x8(xo: u32) -> Activations { return activations(x[0] + vec4<f32>(f32(xo)), vec4<f32>(1.0)); }',
    ],
  ],
};
