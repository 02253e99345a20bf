import { assertNotAbortSignal, CalderaError, describeValue, shownValue } from './errors.js';
import { Rng } from './rng.js';
import { checkTokenArray } from './token-ids.js';

/** Options of the runtimes' `generate()` (runtime-node and runtime-webgpu share them). Defaults: greedy decoding of up to 64 tokens. */
export interface GenerateOptions {
  /** Most tokens to generate. Default 64 (also bounded by the model's context length). */
  maxTokens?: number;
  /** Softmax temperature, finite and ≥ 0; 0 = greedy (default). */
  temperature?: number;
  /** Sample only among the k most likely tokens (≥ 0, a fraction counts as its integer part); 0 = all (default). */
  topK?: number;
  /** Nucleus sampling: smallest set of tokens with cumulative probability ≥ p, p in (0, 1]; 1 = all (default). */
  topP?: number;
  /**
   * > 1 discourages tokens already in the context (CTRL-style: positive logits divided, negative multiplied); finite
   * and > 0. Default 1.
   */
  repetitionPenalty?: number;
  /** Token ids that end generation (e.g. EOS); the stop token is yielded. Default none. */
  stopTokens?: readonly number[];
  /**
   * Strings that end generation: when the decoded completion contains one, generation stops and the token that
   * completed it is not yielded. Needs `decode`. Default none. The tokens yielded before it may hold the stop string's
   * beginning (`" Cour"` before `"t"` completes `"Court"`): to show text, cut it with {@link visibleText}.
   */
  stopStrings?: readonly string[];
  /** Text of generated ids, for `stopStrings`. */
  decode?: (ids: number[]) => string;
  /** Seed of the sampler (deterministic given the seed), an integer in [0, 2³²). Default 0. */
  seed?: number;
  /** Abort: the iterator throws `E_ABORTED` before the next token. */
  signal?: AbortSignal;
}

/**
 * Tokens in rank order — higher logit first, equal logits by lower index (the order of a stable descending sort) —
 * produced lazily by a binary heap over all indices: building it is O(V), each next token O(log V), so a draw that
 * needs the first few hundred tokens of a 128k vocabulary never sorts it.
 */
class RankOrder {
  /** Heap of (logit, index) pairs in two parallel arrays; the root ranks first. */
  private readonly vals: Float64Array;
  private readonly ids: Int32Array;
  private size: number;
  private readonly taken: number[] = [];

  constructor(l: Float64Array) {
    this.size = l.length;
    this.vals = Float64Array.from(l);
    this.ids = new Int32Array(this.size);
    for (let i = 0; i < this.size; i++) this.ids[i] = i;
    for (let i = (this.size >> 1) - 1; i >= 0; i--) this.siftDown(i, this.vals[i]!, this.ids[i]!);
  }

  /** Place (v, id) at or below slot `at`, moving up the children that rank before it. */
  private siftDown(at: number, v: number, id: number): void {
    const { vals, ids } = this;
    const n = this.size;
    let i = at;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      let cv = vals[c]!;
      let ci = ids[c]!;
      if (c + 1 < n) {
        const dv = vals[c + 1]!;
        const di = ids[c + 1]!;
        if (dv > cv || (dv === cv && di < ci)) {
          c++;
          cv = dv;
          ci = di;
        }
      }
      // stop when the child does not rank before (v, id): a higher logit, or the same and a lower index
      if (!(cv > v || (cv === v && ci < id))) break;
      vals[i] = cv;
      ids[i] = ci;
      i = c;
    }
    vals[i] = v;
    ids[i] = id;
  }

  /** The token of rank r (0 = the argmax). */
  at(r: number): number {
    while (this.taken.length <= r) {
      this.taken.push(this.ids[0]!);
      const last = --this.size;
      this.siftDown(0, this.vals[last]!, this.ids[last]!);
    }
    return this.taken[r]!;
  }
}

/**
 * The next token from a row of logits under `options` (the runtimes' shared sampler): the argmax when the temperature
 * is 0, else a draw from the softmax at that temperature, restricted to the top-k tokens and then to the smallest
 * nucleus of probability ≥ top-p. Deterministic given the `rng` state (one `uniform()` per call).
 *
 * The options are checked as `generate()` checks them (`E_VALUE`: see {@link GenerateOptions}); null options are
 * none. Empty logits and a NaN logit are `E_VALUE`, and so are logits that are all −Infinity when the temperature is
 * above 0 (no distribution to draw from; at 0 the first is the argmax). `+Infinity` logits are the softmax's limit:
 * they share all the probability equally and every finite logit has none, so the argmax is the first of them and a
 * draw picks one of them (top-k and top-p apply in rank order as usual).
 *
 * Candidates are taken in rank order (higher logit first, ties by lower index) and only as far as the draw needs
 * them; the weights `exp((l − max)/T)` are normalised over the top k in rank order, or, without top-k, over the whole
 * vocabulary in index order. Cost: O(V + n·log V) for the n candidates looked at, instead of a full sort (18 ms per
 * token for a 32 000-token vocabulary, 83 ms for 128 256, before).
 */
export function sampleToken(logits: Float64Array, options: GenerateOptions, rng: Rng): number {
  if (logits === null || typeof logits !== 'object' || typeof logits.length !== 'number')
    throw new CalderaError(
      'E_VALUE',
      `sampleToken: logits must be an array of numbers, got ${describeValue(logits)}`,
    );
  const o = options ?? {}; // from JavaScript: null options are none
  checkSamplingOptions(o, 'sampleToken');
  return drawToken(logits, o, rng);
}

/** The `E_VALUE` of logits that are all −Infinity above temperature 0. */
function allMinusInfinity(): CalderaError {
  return new CalderaError('E_VALUE', 'sampleToken: every logit is -Infinity (no distribution to draw from)');
}

/** {@link sampleToken} with options already checked (`GenerationRules` checks them once, not per token). */
function drawToken(logits: Float64Array, o: GenerateOptions, rng: Rng): number {
  const l = logits;
  const V = l.length;
  if (V === 0) throw new CalderaError('E_VALUE', 'sampleToken: empty logits (no token to choose)');
  const temp = o.temperature ?? 0;
  let best = 0;
  for (let i = 0; i < V; i++) {
    const v = l[i]!;
    if (v > l[best]!) best = i;
    else if (v !== v) throw new CalderaError('E_VALUE', `sampleToken: logit ${i} is NaN`);
  }
  if (temp <= 0) return best;
  if (typeof (rng as { uniform?: unknown } | undefined)?.uniform !== 'function')
    throw new CalderaError(
      'E_VALUE',
      `sampleToken: rng must be an Rng above temperature 0, got ${describeValue(rng)}`,
    );
  const mx = l[best]!;
  if (mx === -Infinity) throw allMinusInfinity();
  const k = o.topK && o.topK >= 1 ? Math.min(Math.floor(o.topK), V) : V; // a fraction counts as its integer part
  const rank = new RankOrder(l);
  // without top-k the weights are normalised over the whole vocabulary, in index order
  let zAll: number | null = null;
  if (k === V) {
    zAll = 0;
    for (let i = 0; i < V; i++) zAll += weightOf(l[i]!, mx, temp);
  }
  return drawRanked(
    k,
    (r) => rank.at(r),
    (r) => l[rank.at(r)]!,
    zAll,
    o,
    rng,
  );
}

/** A token's unnormalised weight `exp((v − mx)/temp)`; with `mx` +Infinity, equal shares among the +Infinity logits. */
function weightOf(v: number, mx: number, temp: number): number {
  // +Infinity logits: the softmax's limit, equal shares among them (exp(∞ − ∞) would be NaN)
  return mx === Infinity ? (v === Infinity ? 1 : 0) : Math.exp((v - mx) / temp);
}

/**
 * The draw of {@link drawToken} from the tokens in rank order: `idAt(r)` and `valueAt(r)` the token of rank r and its
 * logit, for r < k (rank 0 the argmax, not −Infinity); the weights normalised by `zAll` when given (the whole
 * vocabulary's sum, in index order), else over the first k in rank order. One `rng.uniform()`.
 */
function drawRanked(
  k: number,
  idAt: (r: number) => number,
  valueAt: (r: number) => number,
  zAll: number | null,
  o: GenerateOptions,
  rng: Rng,
): number {
  const temp = o.temperature!;
  const mx = valueAt(0);
  const rankWeights: number[] = []; // weight of the token of rank r, computed once
  const weightAt = (r: number) => (rankWeights[r] ??= weightOf(valueAt(r), mx, temp));
  let z = zAll ?? 0;
  if (zAll === null) for (let r = 0; r < k; r++) z += weightAt(r);
  // candidates: ranks [0, count), probability weight/z, divided by norm (the nucleus' mass) once top-p cuts them
  let count = k;
  let norm = 1;
  if (o.topP && o.topP < 1) {
    let acc = 0;
    for (let r = 0; r < k; r++) {
      acc += weightAt(r) / z;
      if (acc >= o.topP) {
        count = r + 1;
        break;
      }
    }
    norm = 0;
    for (let r = 0; r < count; r++) norm += weightAt(r) / z;
  }
  const prob = (r: number) => weightAt(r) / z / norm; // dividing by norm = 1 changes no bit
  let u = rng.uniform();
  for (let r = 0; r < count; r++) {
    u -= prob(r);
    if (u <= 0) return idAt(r);
  }
  return idAt(count - 1);
}

/** The stop options of {@link GenerateOptions}: `E_VALUE` naming the option when one is not what it says. */
function checkStopOptions(o: GenerateOptions, fn: string): void {
  const { stopTokens: t, stopStrings: st, decode } = o;
  if (t !== undefined && !(Array.isArray(t) && t.every((x) => Number.isInteger(x))))
    throw new CalderaError('E_VALUE', `${fn}: stopTokens must be an array of token ids, got ${String(t)}`);
  if (st !== undefined && !(Array.isArray(st) && st.every((x) => typeof x === 'string')))
    throw new CalderaError('E_VALUE', `${fn}: stopStrings must be an array of strings, got ${String(st)}`);
  if (decode !== undefined && typeof decode !== 'function')
    throw new CalderaError('E_VALUE', `${fn}: decode must be a function, got ${describeValue(decode)}`);
  if (st?.length && !decode) throw new CalderaError('E_VALUE', `${fn}: stopStrings need a decode function`);
}

/**
 * `E_VALUE` unless every sampling option given is in its range: `temperature` finite and ≥ 0, `topK` ≥ 0 (a fraction
 * counts as its integer part), `topP` in (0, 1], `repetitionPenalty` finite and > 0, `seed` an integer in
 * [0, 2³²). Out of range they would not fail but sample something else than asked, silently: a NaN temperature
 * picks the least likely token, `topP: 0` samples the whole vocabulary, a penalty ≤ 0 favours repeated tokens, and
 * seeds are taken modulo 2³² (2³² would give the tokens of seed 0).
 */
function checkSamplingOptions(options: GenerateOptions, fn = 'generate'): void {
  const bad = (name: string, range: string, v: unknown) =>
    new CalderaError('E_VALUE', `${fn}: ${name} must be ${range}, got ${String(v)}`);
  const { temperature: t, topK: k, topP: p, repetitionPenalty: r, seed: s } = options;
  if (t !== undefined && !(Number.isFinite(t) && t >= 0)) throw bad('temperature', 'a finite number ≥ 0', t);
  if (k !== undefined && !(typeof k === 'number' && k >= 0)) throw bad('topK', 'a number ≥ 0 (0: all)', k);
  if (p !== undefined && !(typeof p === 'number' && p > 0 && p <= 1)) throw bad('topP', 'in (0, 1]', p);
  if (r !== undefined && !(Number.isFinite(r) && r > 0))
    throw bad('repetitionPenalty', 'a finite number > 0', r);
  if (s !== undefined && !(Number.isInteger(s) && s >= 0 && s < 2 ** 32))
    throw bad('seed', 'an integer in [0, 4294967295]', s);
}

/** The sampling options a model's `generation_config.json` sets ({@link samplingOf}). */
export type ModelSampling = Required<
  Pick<GenerateOptions, 'temperature' | 'topK' | 'topP' | 'repetitionPenalty'>
>;

/** transformers' `GenerationConfig` defaults of the fields {@link samplingOf} reads. */
const HF_SAMPLING_DEFAULTS = { temperature: 1, top_k: 50, top_p: 1, repetition_penalty: 1 } as const;

/**
 * Fields of a generation config that transformers applies and `generate` has no option for, with their defaults
 * (null: unset): those it applies only when sampling (`do_sample`), and those it applies to greedy decoding too.
 */
const NOT_APPLIED = {
  sampling: { min_p: null, typical_p: 1, epsilon_cutoff: 0, eta_cutoff: 0 },
  always: {
    no_repeat_ngram_size: 0,
    num_beams: 1,
    num_beam_groups: 1,
    diversity_penalty: 0,
    penalty_alpha: null,
    min_length: 0,
    min_new_tokens: null,
    bad_words_ids: null,
    suppress_tokens: null,
    begin_suppress_tokens: null,
    sequence_bias: null,
    forced_bos_token_id: null,
    forced_eos_token_id: null,
    exponential_decay_length_penalty: null,
    guidance_scale: null,
  },
} as const;

/** Where a caller's sampling option comes from the generation config's field. */
const FIELDS = {
  temperature: 'temperature',
  topK: 'top_k',
  topP: 'top_p',
  repetitionPenalty: 'repetition_penalty',
} as const;

/**
 * The sampling a model's `generation_config.json` (parsed; undefined or null: none) asks for, as transformers'
 * `generate()` applies it: with `do_sample: true`, its `temperature`, `top_k` and `top_p` (transformers' defaults 1,
 * 50 and 1 where absent or null); without it, greedy decoding (temperature 0; top-k 0 and top-p 1, unused) — a
 * config without `do_sample` gives only its `repetition_penalty` (default 1), which transformers applies to greedy
 * decoding too. `given`: the caller's own options, which replace the file's (as arguments to transformers'
 * `generate()` do) — a field they replace, or one greedy decoding does not read, is not checked. `notApplied` lists,
 * as `name value`, the fields transformers would apply that {@link GenerateOptions} has no counterpart for (`min_p`,
 * `typical_p`, `epsilon_cutoff`, `eta_cutoff` when sampling; `num_beams` above 1, `no_repeat_ngram_size`,
 * `bad_words_ids`, `min_new_tokens`, `suppress_tokens`, `penalty_alpha`, … either way). A runtime's `generate()`
 * never reads the file itself: pass `samplingOf(json, file, yours).options` to sample as the model's authors advise
 * (Llama 3 and Qwen3 chat models set `do_sample`; Qwen3's model card warns that greedy decoding in its thinking mode
 * can repeat itself endlessly). `E_FORMAT` naming `file` when it is not a JSON object, `do_sample` is not a boolean,
 * or a field it uses is not a number in range (`temperature` ≥ 0, `top_k` an integer ≥ 0, `top_p` in (0, 1],
 * `repetition_penalty` > 0).
 */
export function samplingOf(
  generationConfig: unknown,
  file = 'generation_config.json',
  given: Partial<ModelSampling> = {},
): { options: ModelSampling; notApplied: string[] } {
  const greedy: ModelSampling = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
  if (generationConfig === undefined || generationConfig === null)
    return { options: { ...greedy, ...given }, notApplied: [] };
  if (typeof generationConfig !== 'object' || Array.isArray(generationConfig))
    throw new CalderaError('E_FORMAT', `${file} is ${describeValue(generationConfig)}, not a JSON object`);
  const c = generationConfig as Record<string, unknown>;
  const doSample = c.do_sample ?? false;
  if (typeof doSample !== 'boolean')
    throw new CalderaError('E_FORMAT', `${file}: do_sample ${JSON.stringify(doSample)} is not true or false`);
  const ranges: Record<keyof ModelSampling, [(v: number) => boolean, string]> = {
    temperature: [(v) => v >= 0, 'a number ≥ 0'],
    topK: [(v) => v >= 0 && Number.isInteger(v), 'an integer ≥ 0'],
    topP: [(v) => v > 0 && v <= 1, 'a number in (0, 1]'],
    repetitionPenalty: [(v) => v > 0, 'a number > 0'],
  };
  const options = { ...greedy };
  for (const key of Object.keys(FIELDS) as (keyof ModelSampling)[]) {
    const used = doSample || key === 'repetitionPenalty';
    if (key in given || !used) continue;
    const name = FIELDS[key];
    const v = c[name];
    if (v === undefined || v === null) {
      options[key] = HF_SAMPLING_DEFAULTS[name];
      continue;
    }
    const [ok, range] = ranges[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v))
      throw new CalderaError(
        'E_FORMAT',
        `${file}: ${name} ${JSON.stringify(v) ?? String(v)} is not ${range}`,
      );
    options[key] = v;
  }
  const set = (defaults: Readonly<Record<string, unknown>>) =>
    Object.entries(defaults)
      .filter(([k, def]) => c[k] !== undefined && c[k] !== null && c[k] !== def)
      .map(([k]) => `${k} ${JSON.stringify(c[k])}`);
  return {
    options: { ...options, ...given },
    notApplied: [...(doSample ? set(NOT_APPLIED.sampling) : []), ...set(NOT_APPLIED.always)],
  };
}

/**
 * The part of a completion's `text` to show while it streams, for `stopStrings` (empty ones are ignored): cut before
 * the first stop string it contains (`stopped`: generation should end there), else without its longest tail that
 * could still be the beginning of one (`held`: shown once the next tokens make it something else). Tokens do not end
 * where a stop string begins, so a token-level stop (see {@link GenerateOptions.stopStrings}) cannot give this text;
 * decode every token generated, the one that completes the stop string included, and cut with this.
 */
export function visibleText(
  text: string,
  stopStrings: readonly string[],
): { text: string; stopped: boolean; held: number } {
  let cut = -1;
  for (const st of stopStrings) {
    const at = st.length > 0 ? text.indexOf(st) : -1;
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  if (cut >= 0) return { text: text.slice(0, cut), stopped: true, held: 0 };
  let held = 0;
  for (const st of stopStrings)
    for (let k = Math.min(st.length - 1, text.length); k > held; k--)
      if (text.endsWith(st.slice(0, k))) held = k;
  return { text: text.slice(0, text.length - held), stopped: false, held };
}

/** What {@link GenerationRules.accept} says of a chosen token. */
export type TokenVerdict =
  /** Yield it and go on. */
  | 'continue'
  /** Yield it, then stop (a stop token). */
  | 'last'
  /** Do not yield it, and stop (it completed a stop string). */
  | 'stop';

/**
 * The per-token rules of the runtimes' `generate()`, in one place so that every runtime turns the same logits into
 * the same tokens: the option checks, the repetition penalty (over the prompt and the tokens so far), the seeded
 * sampler ({@link sampleToken}) and the stop rules. For each token a runtime calls {@link pick} with the logits (or,
 * when {@link greedy}, may take the logits' first argmax itself, which is what `pick` returns then) and then
 * {@link accept} with the token.
 */
export class GenerationRules {
  /** Most tokens to generate (`options.maxTokens`, default 64). */
  readonly maxTokens: number;
  /** Temperature 0 and no repetition penalty: the token is always the logits' first argmax. */
  readonly greedy: boolean;
  private readonly options: GenerateOptions;
  private readonly penalty: number;
  private readonly rng: Rng;
  private readonly seen: Set<number>;
  private readonly produced: number[] = [];
  private readonly promptLength: number;

  /**
   * Checks the options against the prompt: `E_VALUE` for a prompt that is not an array of token ids (null,
   * undefined, a number) or is empty, a `maxTokens` that is not a non-negative integer, `stopTokens` that are not an
   * array of integers, `stopStrings` that are not an array of strings, stop strings without a `decode` function, or a
   * sampling option out of its range (see {@link GenerateOptions}: `temperature` finite and ≥ 0,
   * `topK` ≥ 0, `topP` in (0, 1], `repetitionPenalty` finite and > 0, `seed` an integer in [0, 2³²)). A null
   * `options` counts as none; a field that is `undefined` takes its default, and one that is `null` is a value like
   * any other (`E_VALUE`, as every option of the package's number rules).
   */
  constructor(
    prompt: ArrayLike<number>,
    options: GenerateOptions = {},
    /** What the messages name as the caller (default `generate`). */
    private readonly fn = 'generate',
  ) {
    checkTokenArray(prompt, fn, 'the prompt');
    if (prompt.length === 0) throw new CalderaError('E_VALUE', `${fn}: empty prompt`);
    options ??= {}; // from JavaScript: null options are none
    assertNotAbortSignal(options, fn); // generate(model, prompt, signal): refused, not ignored
    checkStopOptions(options, fn);
    const maxTokens = options.maxTokens;
    if (maxTokens !== undefined && !(Number.isInteger(maxTokens) && maxTokens >= 0))
      throw new CalderaError(
        'E_VALUE',
        `${fn}: maxTokens must be a non-negative integer, got ${shownValue(maxTokens)}`,
      );
    this.maxTokens = maxTokens ?? 64;
    checkSamplingOptions(options, fn);
    this.options = options;
    this.penalty = options.repetitionPenalty ?? 1;
    this.greedy = (options.temperature ?? 0) <= 0 && this.penalty === 1;
    this.rng = new Rng(options.seed ?? 0);
    this.seen = new Set(Array.from(prompt));
    this.promptLength = prompt.length;
  }

  /**
   * How many tokens `generate()` produces at most after the prompt in a context of `context` positions:
   * `min(maxTokens, context − prompt length)` (the KV cache holds the prompt and the tokens generated; the last one
   * is never run). 0 means no pass at all. `E_VALUE` when the prompt alone exceeds the context; `what` says in that
   * message what limits the context (e.g. `"its max positions"`).
   */
  tokensToGenerate(context: number, what?: string): number {
    if (this.promptLength > context)
      throw new CalderaError(
        'E_VALUE',
        `${this.fn}: prompt of ${this.promptLength} tokens exceeds the model's context of ${context} tokens` +
          (what ? ` (${what})` : ''),
      );
    return Math.min(this.maxTokens, context - this.promptLength);
  }

  /** The next token from the model's logits over the vocabulary (the penalty applied to a copy in f64). */
  pick(logits: ArrayLike<number>): number {
    const l = Float64Array.from(logits);
    const nan = l.findIndex((v) => Number.isNaN(v));
    if (nan >= 0) throw this.nanLogit(nan);
    if (this.penalty !== 1) for (const t of this.seen) l[t] = this.penalize(l[t]!);
    return drawToken(l, this.options, this.rng);
  }

  /** A seen token's logit under the repetition penalty (CTRL-style: positive divided, negative multiplied), in f64. */
  private penalize(v: number): number {
    return v > 0 ? v / this.penalty : v * this.penalty;
  }

  /** The `E_VALUE` of the model's NaN logit `id`. */
  private nanLogit(id: number): CalderaError {
    return new CalderaError(
      'E_VALUE',
      `${this.fn}: the model's logit ${id} is NaN after ${this.produced.length} generated tokens: its weights ` +
        'overflow f32 when applied or hold non-finite values',
    );
  }

  /**
   * k when {@link pickTopK} can stand in for {@link pick} over a vocabulary of `vocab` tokens: sampling (temperature
   * above 0) among the top k tokens, k below `vocab`; else null (greedy, or no top-k: the weights are then normalised
   * over the whole vocabulary).
   */
  topKOf(vocab: number): number | null {
    const o = this.options;
    if ((o.temperature ?? 0) <= 0 || !o.topK || o.topK < 1) return null;
    const k = Math.floor(o.topK);
    return k < vocab ? k : null;
  }

  /**
   * The tokens whose logits the repetition penalty changes — the prompt's and those generated so far, each once, in
   * the order first seen — or none without a penalty. See {@link pickTopK}.
   */
  penalized(): number[] {
    return this.penalty === 1 ? [] : Array.from(this.seen);
  }

  /**
   * The token {@link pick} gives for logits of which only some are known: `top`, the k = {@link topKOf}(`vocab`)
   * largest logits of the tokens not in {@link penalized} (ids and values in any order; ids ≥ `vocab` are padding, as
   * when fewer tokens are left), and `penalizedValues`, the logits of {@link penalized}'s tokens in its order. The
   * same token as `pick` over all the logits, to the bit: the k tokens that rank first after the penalty are among
   * these, and the draw reads only them. The runtime checks the other logits for NaN; a NaN here is `E_VALUE` as in
   * `pick`, and so are ids that are not tokens of the vocabulary or are given twice, or fewer than k tokens in all.
   */
  pickTopK(
    top: { ids: ArrayLike<number>; values: ArrayLike<number> },
    penalizedValues: ArrayLike<number>,
    vocab: number,
  ): number {
    const k = this.topKOf(vocab);
    if (k === null)
      throw new CalderaError('E_VALUE', 'pickTopK: these options sample from no top k (see topKOf)');
    const ids = this.penalized();
    if (penalizedValues.length !== ids.length || top.ids.length !== top.values.length)
      throw new CalderaError(
        'E_VALUE',
        `pickTopK: ${top.ids.length} top ids with ${top.values.length} values, ${penalizedValues.length} values ` +
          `for ${ids.length} penalized tokens`,
      );
    const cands: { id: number; v: number }[] = [];
    const given = new Set<number>();
    const add = (id: number, v: number) => {
      if (!Number.isInteger(id) || id < 0 || given.has(id))
        throw new CalderaError(
          'E_VALUE',
          `pickTopK: token ${shownValue(id)} is no token id or is given twice`,
        );
      if (Number.isNaN(v)) throw this.nanLogit(id);
      given.add(id);
      cands.push({ id, v });
    };
    for (let j = 0; j < top.ids.length; j++) {
      const id = top.ids[j]!;
      if (id < vocab) add(id, top.values[j]!);
    }
    // as pick: the penalty on f64 copies of the logits
    ids.forEach((id, j) => add(id, this.penalize(+penalizedValues[j]!)));
    if (cands.length < k)
      throw new CalderaError('E_VALUE', `pickTopK: ${cands.length} tokens given, ${k} needed`);
    // rank order: higher logit first, equal logits (−0 and 0, or infinities) by lower index
    cands.sort((a, b) => (a.v > b.v ? -1 : a.v < b.v ? 1 : a.id - b.id));
    if (cands[0]!.v === -Infinity) throw allMinusInfinity();
    return drawRanked(
      k,
      (r) => cands[r]!.id,
      (r) => cands[r]!.v,
      null,
      this.options,
      this.rng,
    );
  }

  /** Record the chosen token and say whether to yield it and whether to go on. */
  accept(token: number): TokenVerdict {
    const o = this.options;
    this.produced.push(token);
    if (o.stopStrings?.length) {
      const text: unknown = o.decode!(this.produced);
      if (typeof text !== 'string')
        throw new CalderaError(
          'E_VALUE',
          `${this.fn}: decode must return a string (for stopStrings), returned ${describeValue(text)}`,
        );
      if (o.stopStrings.some((st) => st.length > 0 && text.includes(st))) return 'stop';
    }
    this.seen.add(token);
    return o.stopTokens?.includes(token) ? 'last' : 'continue';
  }
}
