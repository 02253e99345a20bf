import type { TextTokenizer } from '@caldera/runtime-node';

/** Prompt tokens decoded before a completion's ids ({@link completionDecoder}). */
const CONTEXT_TOKENS = 8;

/**
 * A function giving the text of generated ids `out` as it reads after the prompt `prompt`: the decoding of the
 * prompt's last {@link CONTEXT_TOKENS} tokens and `out` together, less that of those tokens alone. Decoding `out`
 * alone loses what the decoder does at the start of a text: SentencePiece-style decoders (llama2.c's, Metaspace, a
 * Strip step) drop the first piece's leading space, so "Hi" + "▁a" was printed "Hia". Where the context's text is not
 * a prefix of the whole (a character whose bytes the first ids complete), `out` alone. Decoded without the clean-up of
 * spaces before punctuation that some configs ask for (`clean_up_tokenization_spaces`): it rewrites text printed
 * already (" ." became "." after the space was printed), so a stream shows the text as the model produced it.
 */
export function completionDecoder(
  tokenizer: TextTokenizer,
  prompt: readonly number[],
): (out: readonly number[]) => string {
  const context = prompt.slice(-CONTEXT_TOKENS);
  const decode = (ids: readonly number[]) => tokenizer.decode(ids, { cleanUpSpaces: false });
  const base = decode(context);
  return (out) => {
    const text = decode([...context, ...out]);
    return text.startsWith(base) ? text.slice(base.length) : decode(out);
  };
}

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
