/**
 * The text to print after `printed` once the completion so far decodes to `decoded`. A character whose bytes are split
 * over several tokens decodes to U+FFFD until its last byte arrives, so trailing U+FFFD are held back until `final`
 * (the end of generation, when they are what the model produced). Assumes that decoding more ids extends the text of
 * fewer, as byte-level and SentencePiece decoders do.
 */
export function streamedText(printed: string, decoded: string, final = false): string {
  const stable = final ? decoded : decoded.replace(/\uFFFD+$/u, '');
  return stable.length > printed.length ? stable.slice(printed.length) : '';
}
