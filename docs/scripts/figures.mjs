// Regenerates the figures of the docs site from measured data: reads the JSON Lines files in docs/data/ and writes
// SVG files to docs/public/figures/. No dependencies: a small hand-written SVG helper below.
//   npm run figures -w @caldera/docs        (= node scripts/figures.mjs)
// The data files are written by docs/scripts/measure-rank-sweep.mjs and docs/scripts/measure-ppl-vs-bits.mjs; their
// first line (kind "meta") records the command that produced them, which each figure prints in its footer.
/* global console, URL */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dataDir = fileURLToPath(new URL('../data/', import.meta.url));
const outDir = fileURLToPath(new URL('../public/figures/', import.meta.url));

// ---------------------------------------------------------------------------------------------------------------
// SVG helper

const esc = (s) =>
  String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const num = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(2));

/** `el('rect', { x: 1 }, child…)` → `<rect x="1">…</rect>`; string children are inserted as they are. */
function el(tag, attrs = {}, ...children) {
  const a = Object.entries(attrs)
    .filter(([, v]) => v !== undefined && v !== null && v !== false)
    .map(([k, v]) => ` ${k}="${esc(typeof v === 'number' ? num(v) : v)}"`)
    .join('');
  const inner = children.flat().join('');
  return inner ? `<${tag}${a}>${inner}</${tag}>` : `<${tag}${a}/>`;
}
const text = (x, y, s, attrs = {}) => el('text', { x, y, ...attrs }, esc(s));

const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif';
const COLORS = { caldera: '#d9480f', ldlq: '#1971c2', rtn: '#5c940d', original: '#495057', grid: '#e9ecef' };

function svgDoc(width, height, title, body) {
  return (
    el(
      'svg',
      {
        xmlns: 'http://www.w3.org/2000/svg',
        width,
        height,
        viewBox: `0 0 ${width} ${height}`,
        role: 'img',
        'aria-label': title,
        'font-family': FONT,
        'font-size': 12,
      },
      el('title', {}, esc(title)),
      el('rect', { x: 0, y: 0, width, height, rx: 8, fill: '#ffffff' }),
      body,
    ) + '\n'
  );
}

/** Evenly spaced "nice" ticks covering [min, max]. */
function niceTicks(min, max, count = 5) {
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) ticks.push(+t.toFixed(10));
  return ticks;
}

/** Ticks 1, 2, 5 × 10^e inside [min, max], for a logarithmic axis. */
function logTicks(min, max) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++)
    for (const f of [1, 2, 5]) {
      const t = +(f * 10 ** e).toPrecision(6);
      if (t >= min * (1 - 1e-9) && t <= max * (1 + 1e-9)) ticks.push(t);
    }
  return ticks;
}

function marker(shape, cx, cy, color) {
  if (shape === 'square') return el('rect', { x: cx - 4.5, y: cy - 4.5, width: 9, height: 9, fill: color });
  if (shape === 'diamond') {
    const p = [
      [cx, cy - 6],
      [cx + 6, cy],
      [cx, cy + 6],
      [cx - 6, cy],
    ];
    return el('polygon', { points: p.map(([a, b]) => `${num(a)},${num(b)}`).join(' '), fill: color });
  }
  return el('circle', { cx, cy, r: 4.5, fill: color });
}

/**
 * A line chart. series: [{ name, color, points: [{ x, y, label? }], from?: { x, y } (extra first point of the line
 * only), line?: boolean, marker?: 'circle'|'square'|'diamond' }];
 * hlines: [{ y, label, color }] (dashed reference lines); x/y: { min, max, ticks?, log?, format? }.
 */
function lineChart({
  title,
  xLabel,
  yLabel,
  x,
  y,
  series,
  hlines = [],
  footer = [],
  width = 720,
  height = 440,
}) {
  const m = { left: 72, right: 24, top: 48, bottom: 84 + 14 * footer.length };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const sx = (v) => m.left + ((v - x.min) / (x.max - x.min)) * pw;
  const ty = y.log ? Math.log10 : (v) => v;
  const sy = (v) => m.top + ph - ((ty(v) - ty(y.min)) / (ty(y.max) - ty(y.min))) * ph;
  const fx = x.format ?? ((v) => String(v));
  const fy = y.format ?? ((v) => String(v));
  const xt = x.ticks ?? niceTicks(x.min, x.max);
  const yt = y.ticks ?? (y.log ? logTicks(y.min, y.max) : niceTicks(y.min, y.max));
  const parts = [];
  parts.push(text(m.left, 28, title, { 'font-size': 16, 'font-weight': 600, fill: '#212529' }));
  for (const t of yt) {
    parts.push(el('line', { x1: m.left, x2: m.left + pw, y1: sy(t), y2: sy(t), stroke: COLORS.grid }));
    parts.push(text(m.left - 8, sy(t) + 4, fy(t), { 'text-anchor': 'end', fill: '#495057' }));
  }
  for (const t of xt) {
    parts.push(el('line', { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + ph, stroke: COLORS.grid }));
    parts.push(text(sx(t), m.top + ph + 18, fx(t), { 'text-anchor': 'middle', fill: '#495057' }));
  }
  parts.push(el('rect', { x: m.left, y: m.top, width: pw, height: ph, fill: 'none', stroke: '#adb5bd' }));
  parts.push(text(m.left + pw / 2, m.top + ph + 40, xLabel, { 'text-anchor': 'middle', fill: '#212529' }));
  parts.push(
    text(18, m.top + ph / 2, yLabel, {
      'text-anchor': 'middle',
      transform: `rotate(-90 18 ${m.top + ph / 2})`,
      fill: '#212529',
    }),
  );
  for (const h of hlines) {
    parts.push(
      el('line', {
        x1: m.left,
        x2: m.left + pw,
        y1: sy(h.y),
        y2: sy(h.y),
        stroke: h.color,
        'stroke-dasharray': '6 4',
        'stroke-width': 1.5,
      }),
    );
    parts.push(text(m.left + 6, sy(h.y) + 16, h.label, { fill: h.color }));
  }
  for (const s of series) {
    const linePoints = s.from ? [s.from, ...s.points] : s.points;
    if (s.line !== false && linePoints.length > 1)
      parts.push(
        el('polyline', {
          points: linePoints.map((p) => `${num(sx(p.x))},${num(sy(p.y))}`).join(' '),
          fill: 'none',
          stroke: s.color,
          'stroke-width': 2,
        }),
      );
    for (const p of s.points) {
      const [cx, cy] = [sx(p.x), sy(p.y)];
      parts.push(marker(s.marker, cx, cy, s.color));
      if (p.label)
        parts.push(
          text(cx + (p.dx ?? 8), cy + (p.dy ?? -8), p.label, {
            fill: s.color,
            'font-size': 11,
            'text-anchor': p.anchor ?? 'start',
          }),
        );
    }
  }
  // legend, top right inside the plot
  const lw = 250;
  const lx = m.left + pw - lw - 8;
  const ly = m.top + 8;
  parts.push(
    el('rect', {
      x: lx,
      y: ly,
      width: lw,
      height: 10 + 18 * series.length,
      fill: '#ffffff',
      'fill-opacity': 0.9,
      stroke: '#dee2e6',
      rx: 4,
    }),
  );
  series.forEach((s, i) => {
    const yy = ly + 16 + 18 * i;
    parts.push(marker(s.marker, lx + 14, yy - 4, s.color));
    parts.push(text(lx + 26, yy, s.name, { fill: '#212529' }));
  });
  footer.forEach((f, i) => {
    parts.push(
      text(m.left, height - 14 * (footer.length - i) + 2, f, { 'font-size': 10.5, fill: '#868e96' }),
    );
  });
  return svgDoc(width, height, title, parts);
}

/** A horizontal bar chart: bars: [{ label, value, color, note? }]. */
function barChart({ title, xLabel, bars, refLine, footer = [], width = 720 }) {
  const m = { left: 230, right: 80, top: 48, bottom: 56 + 14 * footer.length };
  const bh = 26;
  const gap = 12;
  const ph = bars.length * (bh + gap) - gap;
  const height = m.top + ph + m.bottom;
  const pw = width - m.left - m.right;
  const max = Math.max(...bars.map((b) => b.value)) * 1.08;
  const ticks = niceTicks(0, max);
  const sx = (v) => m.left + (v / ticks.at(-1)) * pw;
  const parts = [text(m.left - 210, 28, title, { 'font-size': 16, 'font-weight': 600, fill: '#212529' })];
  for (const t of ticks) {
    parts.push(el('line', { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + ph, stroke: COLORS.grid }));
    parts.push(text(sx(t), m.top + ph + 18, String(t), { 'text-anchor': 'middle', fill: '#495057' }));
  }
  bars.forEach((b, i) => {
    const yy = m.top + i * (bh + gap);
    parts.push(
      el('rect', { x: m.left, y: yy, width: Math.max(1, sx(b.value) - m.left), height: bh, fill: b.color }),
    );
    parts.push(text(m.left - 8, yy + bh / 2 + 4, b.label, { 'text-anchor': 'end', fill: '#212529' }));
    parts.push(text(sx(b.value) + 6, yy + bh / 2 + 4, b.note ?? String(b.value), { fill: '#212529' }));
  });
  if (refLine)
    parts.push(
      el('line', {
        x1: sx(refLine.value),
        x2: sx(refLine.value),
        y1: m.top - 6,
        y2: m.top + ph,
        stroke: COLORS.original,
        'stroke-dasharray': '6 4',
      }),
    );
  parts.push(text(m.left + pw / 2, m.top + ph + 40, xLabel, { 'text-anchor': 'middle', fill: '#212529' }));
  footer.forEach((f, i) => {
    parts.push(
      text(m.left - 210, height - 14 * (footer.length - i) + 2, f, { 'font-size': 10.5, fill: '#868e96' }),
    );
  });
  return svgDoc(width, height, title, parts);
}

// ---------------------------------------------------------------------------------------------------------------
// data

function readJsonl(name) {
  if (!existsSync(dataDir + name)) {
    console.warn(`skipped the figures of docs/data/${name}: no such file (run its measure script first)`);
    return null;
  }
  const lines = readFileSync(dataDir + name, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  const meta = lines.find((l) => l.kind === 'meta') ?? {};
  return { meta, points: lines.filter((l) => l.kind === 'point') };
}

const figures = {};

// 1. error vs rank, one matrix
const rankSweep = readJsonl('rank-sweep.jsonl');
if (rankSweep) {
  const { meta, points } = rankSweep;
  const cal = points
    .filter((p) => p.method === 'caldera' || p.method === 'ldlq')
    .sort((a, b) => a.rank - b.rank);
  const ldlq = points.find((p) => p.method === 'ldlq');
  const rtn = points.find((p) => p.method === 'rtn');
  const errs = points.map((p) => p.error);
  const maxRank = Math.max(...cal.map((p) => p.rank));
  figures['error-vs-rank.svg'] = lineChart({
    title: `Activation-aware error vs rank k (one ${meta.shape?.join('×')} matrix)`,
    xLabel:
      'rank k of L·R (Q 2-bit E8P12, L and R 4-bit); labels: error · bits per weight (paper accounting)',
    yLabel: 'error ‖(Ŵ − W)·H^½‖ / ‖W·H^½‖ (log)',
    x: { min: -4, max: maxRank + 10, ticks: cal.map((p) => p.rank).filter((r) => r !== 8) },
    y: { min: Math.min(...errs) * 0.7, max: Math.max(...errs) * 1.6, log: true },
    series: [
      {
        name: 'CALDERA (Q + L·R)',
        color: COLORS.caldera,
        // at k = 0 CALDERA is LDLQ alone: the curve starts from that point
        from: ldlq ? { x: 0, y: ldlq.error } : undefined,
        points: cal
          .filter((p) => p.rank > 0)
          .map((p) => ({
            x: p.rank,
            y: p.error,
            label: `${p.error.toFixed(3)} · ${p.paperBitsPerWeight} bits`,
            ...(p.rank === maxRank ? { anchor: 'end', dx: 0, dy: -12 } : {}),
          })),
      },
      {
        name: 'LDLQ only (k = 0, QuIP#-style)',
        color: COLORS.ldlq,
        marker: 'square',
        points: ldlq
          ? [{ x: 0, y: ldlq.error, label: `${ldlq.error.toFixed(3)} · ${ldlq.paperBitsPerWeight} bits` }]
          : [],
      },
      {
        name: 'RTN (E8P12 round-to-nearest)',
        color: COLORS.rtn,
        marker: 'diamond',
        points: rtn
          ? [{ x: 0, y: rtn.error, label: `${rtn.error.toFixed(3)} · ${rtn.paperBitsPerWeight} bits` }]
          : [],
      },
    ].filter((s) => s.points.length),
    footer: [
      `data: docs/data/rank-sweep.jsonl, measured with \`${meta.command}\` (${meta.cpu ?? ''}, ${meta.node ?? ''})`,
      'synthetic weight and calibration Hessian of examples/decompose-matrix; figure: docs/scripts/figures.mjs',
    ],
  });
}

// 2. perplexity vs bits per weight, reference model
const pplVsBits = readJsonl('ppl-vs-bits.jsonl');
if (pplVsBits) {
  const { meta, points } = pplVsBits;
  const cal = points.filter((p) => p.method === 'caldera').sort((a, b) => a.bitsPerWeight - b.bitsPerWeight);
  const ldlq = points.find((p) => p.method === 'ldlq');
  const rtn = points.find((p) => p.method === 'rtn');
  const original = points[0]?.perplexity.original;
  const all = [...points.map((p) => p.perplexity.compressed), original];
  const bits = points.map((p) => p.bitsPerWeight);
  const ctx = points[0]?.perplexity;
  const pt = (p, extra = {}) => ({
    x: p.bitsPerWeight,
    y: p.perplexity.compressed,
    label: `${p.perplexity.compressed.toFixed(2)}`,
    ...extra,
  });
  figures['ppl-vs-bits.svg'] = lineChart({
    title: 'Reference model: held-out perplexity vs bits per weight',
    xLabel: 'average bits per weight of the linear layers (paper accounting)',
    yLabel: 'perplexity (lower is better)',
    x: {
      min: Math.min(...bits) - 0.1,
      max: Math.max(...bits) + 0.15,
      ticks: niceTicks(Math.min(...bits), Math.max(...bits) + 0.05, 5),
      format: (v) => v.toFixed(2),
    },
    y: { min: Math.floor(Math.min(...all) - 1), max: Math.ceil(Math.max(...all) + 1.5) },
    series: [
      {
        name: 'CALDERA (--bits 2.2, 2.4, 2.8)',
        color: COLORS.caldera,
        points: cal.map((p, i) =>
          pt(p, {
            label: `${p.perplexity.compressed.toFixed(2)} · ${p.bitsPerWeight.toFixed(2)} bits`,
            ...(i === cal.length - 1 ? { anchor: 'end', dx: 0, dy: -12 } : {}),
          }),
        ),
      },
      {
        name: 'LDLQ only (--method ldlq)',
        color: COLORS.ldlq,
        marker: 'square',
        points: ldlq ? [pt(ldlq)] : [],
      },
      { name: 'RTN (--method rtn)', color: COLORS.rtn, marker: 'diamond', points: rtn ? [pt(rtn)] : [] },
    ].filter((s) => s.points.length),
    hlines: original
      ? [{ y: original, label: `original f16 model: ${original.toFixed(2)}`, color: COLORS.original }]
      : [],
    footer: [
      `data: docs/data/ppl-vs-bits.jsonl (${ctx?.tokens} held-out tokens, context ${ctx?.context}), measured with`,
      `\`node packages/cli/dist/bin.js compress <flags> --json\` per point (${meta.cpu ?? ''}); figure: docs/scripts/figures.mjs`,
    ],
  });
  const bars = [
    ...cal.map((p) => ({ p, label: `CALDERA --bits ${p.bitsTarget}`, color: COLORS.caldera })),
    ...(ldlq ? [{ p: ldlq, label: 'LDLQ only', color: COLORS.ldlq }] : []),
    ...(rtn ? [{ p: rtn, label: 'RTN', color: COLORS.rtn }] : []),
  ].map(({ p, label, color }) => {
    const inc = 100 * (p.perplexity.compressed / p.perplexity.original - 1);
    return {
      label: `${label} (${p.bitsPerWeight.toFixed(2)} bits)`,
      value: +inc.toFixed(2),
      color,
      note: `+${inc.toFixed(1)} %`,
    };
  });
  figures['ppl-increase.svg'] = barChart({
    title: 'Perplexity increase over the original model',
    xLabel: 'held-out perplexity increase, % (lower is better)',
    bars,
    footer: ['data: docs/data/ppl-vs-bits.jsonl; figure: docs/scripts/figures.mjs'],
  });
}

// 3. the Q + L·R picture, to scale
{
  const [m, n, k] = [512, 512, 64];
  const s = 0.34; // px per row/column
  const [W, H] = [n * s, m * s];
  const K = k * s;
  const top = 64;
  const parts = [
    text(24, 30, `W ≈ Q + L·R, to scale for m = n = ${m}, k = ${k}`, {
      'font-size': 16,
      'font-weight': 600,
      fill: '#212529',
    }),
  ];
  const box = (x, y, w, h, fill, label, sub, bits) => {
    parts.push(el('rect', { x, y, width: w, height: h, fill, stroke: '#343a40', 'stroke-width': 1.2 }));
    parts.push(
      text(x + w / 2, y + h / 2 + 5, label, { 'text-anchor': 'middle', 'font-size': 18, 'font-weight': 600 }),
    );
    parts.push(text(x + w / 2, y + h + 18, sub, { 'text-anchor': 'middle', fill: '#495057' }));
    parts.push(text(x + w / 2, y + h + 34, bits, { 'text-anchor': 'middle', fill: '#495057' }));
  };
  const op = (x, y, s2) =>
    parts.push(text(x, y, s2, { 'text-anchor': 'middle', 'font-size': 26, fill: '#495057' }));
  let x = 24;
  box(x, top, W, H, '#f1f3f5', 'W', `m × n = ${m} × ${n}`, '16-bit (f16/bf16)');
  x += W + 36;
  op(x - 18, top + H / 2 + 9, '≈');
  // Q: a lattice-like fill to suggest 8-weight codewords
  const pid = 'e8';
  parts.push(
    el(
      'defs',
      {},
      el(
        'pattern',
        { id: pid, width: 8, height: 8, patternUnits: 'userSpaceOnUse' },
        el('rect', { width: 8, height: 8, fill: '#ffe8cc' }),
        el('path', { d: 'M0 0H8M0 0V8', stroke: '#ffc078', 'stroke-width': 1 }),
      ),
    ),
  );
  box(x, top, W, H, `url(#${pid})`, 'Q', `m × n, E8P12 codes`, '2 bits/weight');
  x += W + 36;
  op(x - 18, top + H / 2 + 9, '+');
  box(x, top, K, H, '#d0ebff', 'L', `m × k`, '4-bit');
  x += K + 22;
  op(x - 11, top + K / 2 + 9, '×');
  box(x, top, W, K, '#d3f9d8', 'R', `k × n = ${k} × ${n}`, '4-bit');
  const paper = 2 + (k * (4 * m + 4 * n)) / (m * n);
  const width = Math.ceil(x + W + 24);
  const height = top + H + 96;
  parts.push(
    text(
      24,
      top + H + 66,
      `average: 2 + k·(4·m + 4·n)/(m·n) = ${paper.toFixed(2)} bits per weight (paper accounting)`,
      {
        fill: '#212529',
      },
    ),
  );
  parts.push(
    text(
      24,
      top + H + 84,
      'figure: docs/scripts/figures.mjs; Q and L·R are fitted to calibration activations (H = XᵀX)',
      {
        'font-size': 10.5,
        fill: '#868e96',
      },
    ),
  );
  figures['q-plus-lr.svg'] = svgDoc(width, height, 'W ≈ Q + L·R', parts);
}

mkdirSync(outDir, { recursive: true });
for (const [name, svg] of Object.entries(figures)) {
  writeFileSync(outDir + name, svg);
  console.log(`wrote docs/public/figures/${name} (${svg.length} bytes)`);
}
