/** How a decode pool's threads share a layer's rows (caldera-kernel.ts's `splitRanges`, matvec.ts's `denseRanges`). */

/**
 * Layers with fewer weights than this run whole on the calling thread even with a decode pool: below it the hand-off
 * to the workers (≈ 10–30 µs) is a large part of the product.
 */
export const SPLIT_MIN_WEIGHTS = 1 << 18;

/**
 * Rows [start, end) in blocks of `block` rows, spread over `parts` consecutive ranges `[row0, rows]` as evenly as they
 * go (the first `blocks % parts` ranges one block more; the last range may end with a partial block), empty ranges
 * dropped.
 */
export function evenRanges(start: number, end: number, block: number, parts: number): [number, number][] {
  const blocks = Math.ceil((end - start) / block);
  const base = Math.floor(blocks / parts);
  const extra = blocks % parts;
  const ranges: [number, number][] = [];
  let row0 = start;
  for (let t = 0; t < parts && row0 < end; t++) {
    const rows = Math.min((base + (t < extra ? 1 : 0)) * block, end - row0);
    if (rows > 0) ranges.push([row0, rows]);
    row0 += rows;
  }
  return ranges;
}

/**
 * Whether a model's LM head is split over a decode pool: only when its blocks' largest layers (the MLP's, hidden ×
 * intermediate weights before padding) reach {@link SPLIT_MIN_WEIGHTS} too. A whole token passes between two products
 * of the head, so workers that split nothing else sleep in between and every head product waits for them to wake:
 * measured in headless Chromium on the 2-core machine, the reference model (hidden 256, intermediate 768: only its
 * 2048 × 256 head above the threshold) decoded 200 tokens at 569 tokens/s with its head split against 634–674 alone.
 */
export const headSplits = (config: { hiddenSize: number; intermediateSize: number }): boolean =>
  config.hiddenSize * config.intermediateSize >= SPLIT_MIN_WEIGHTS;
