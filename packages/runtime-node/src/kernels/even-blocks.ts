/**
 * `blocks` blocks over `parts` parts as evenly as they go (the first `blocks % parts` parts one more): the part sizes,
 * in blocks, zeros dropped. How the decode pool's threads share a layer's rows.
 */
export function evenBlocks(blocks: number, parts: number): number[] {
  const base = Math.floor(blocks / parts);
  const extra = blocks % parts;
  return Array.from({ length: parts }, (_, t) => base + (t < extra ? 1 : 0)).filter((b) => b > 0);
}
