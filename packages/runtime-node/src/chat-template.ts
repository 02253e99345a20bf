import { Environment, Interpreter, parse, tokenize } from '@huggingface/jinja';

/**
 * Limits of {@link renderChatTemplate}: a chat template comes with a downloaded model, and `@huggingface/jinja` runs
 * loops and string operations without any (`range(1e9)` or a string squared a few times stopped the process with a V8
 * fatal error after seconds and gigabytes). Real templates stay far below them: a few steps per character of the
 * prompt, which is at most the model's context.
 */
export const CHAT_TEMPLATE_LIMITS = {
  /** Items one `range()` may make, as in Jinja's sandbox (`MAX_RANGE`). */
  rangeItems: 100_000,
  /**
   * Steps of one render: one per evaluation, one per 16 characters of each string and four per item of each list or
   * mapping an evaluation makes or looks up (a list only its length or one item is taken of excepted), and 40 per item
   * of a list a loop runs over (an iteration costs about 4 µs, even with an empty body, which evaluates nothing). Deterministic, unlike a time limit: about a second of work here at most; a conversation of 1000 messages
   * of 2 KB takes about 1 % of it.
   */
  steps: 10_000_000,
  /** Characters of any string value, the rendered prompt included (4 Mi: about a million tokens). */
  stringChars: 1 << 22,
  /** Items of any list value. */
  listItems: 1 << 20,
} as const;

/** The parts of `@huggingface/jinja`'s syntax nodes the budget reads. */
interface TemplateNode {
  type?: string;
  iterable?: { type?: string; lhs?: object };
  operand?: TemplateNode;
  filter?: { type?: string; value?: unknown };
  object?: TemplateNode;
  property?: { type?: string };
}

/** The interpreter of {@link renderChatTemplate}: the library's, counting what each evaluation makes. */
class BudgetedInterpreter extends Interpreter {
  private steps = 0;
  /** The expressions loops run over (a `for … in xs if …` loop's `xs`): their items are iterations. */
  private readonly loopLists = new WeakSet<object>();
  /** The expressions only the length or one item of is taken (`xs|length`, `xs[i]`, `x.name`): no scan of a list. */
  private readonly constantTime = new WeakSet<object>();

  /**
   * `node` into {@link constantTime} where it only looks a value up (a name, or a member of one: not a slice, call,
   * filter or operation, which makes a list that must be charged: `range(100000)[0]` in a loop ran for hours).
   */
  private markLookup(node: TemplateNode | undefined): void {
    const lookup =
      node?.type === 'Identifier' ||
      (node?.type === 'MemberExpression' && node.property?.type !== 'SliceExpression');
    if (lookup) this.constantTime.add(node);
  }

  override evaluate(...args: Parameters<Interpreter['evaluate']>): ReturnType<Interpreter['evaluate']> {
    const node = args[0] as TemplateNode | undefined;
    if (node?.type === 'For' && node.iterable)
      this.loopLists.add(node.iterable.type === 'SelectExpression' ? node.iterable.lhs! : node.iterable);
    // a list or mapping whose length or one item is taken, `messages|length`, `messages[i]`, `message.role`: O(1)
    if (
      node?.type === 'FilterExpression' &&
      node.filter?.type === 'Identifier' &&
      node.filter.value === 'length'
    )
      this.markLookup(node.operand);
    if (node?.type === 'MemberExpression' && node.property?.type !== 'SliceExpression')
      this.markLookup(node.object);
    const v = super.evaluate(...args);
    const value = (v as { value?: unknown }).value;
    const size =
      typeof value === 'string' || Array.isArray(value)
        ? value.length
        : value instanceof Map
          ? value.size
          : 0;
    if (typeof value === 'string' && size > CHAT_TEMPLATE_LIMITS.stringChars)
      throw new Error(`it made a string of ${size} characters, over ${CHAT_TEMPLATE_LIMITS.stringChars}`);
    if (Array.isArray(value) && size > CHAT_TEMPLATE_LIMITS.listItems)
      throw new Error(`it made a list of ${size} items, over ${CHAT_TEMPLATE_LIMITS.listItems}`);
    // A list a loop runs over is charged by its items (iterations); one looked up by name inside a loop,
    // `messages[loop.index0 - 1]`, is not an iteration: charged by its size, as made, except where only its length or
    // one item is taken (one step: `messages|length` in a loop over the messages was quadratic, and a Qwen3 chat of
    // 12 000 short messages was refused as a runaway loop). What scans it (`x in xs`) pays its size; so does a string.
    this.steps +=
      1 +
      (node && this.loopLists.has(node)
        ? 40 * size
        : node && this.constantTime.has(node) && typeof value !== 'string'
          ? 0
          : typeof value === 'string'
            ? Math.ceil(size / 16)
            : // a list or mapping costs the library ~0.25 µs an item (a value object each): `range(100000)` in a
              // loop, charged a sixteenth, ran for a minute within the budget
              4 * size);
    if (this.steps > CHAT_TEMPLATE_LIMITS.steps)
      throw new Error(
        `it ran over ${CHAT_TEMPLATE_LIMITS.steps} steps (a runaway loop?): chat templates are bounded`,
      );
    return v;
  }
}

/** Jinja's `range([start,] stop[, step])`, refusing more than {@link CHAT_TEMPLATE_LIMITS.rangeItems} items. */
function boundedRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  for (const [name, v] of [
    ['start', start],
    ['stop', stop],
    ['step', step],
  ] as const)
    if (!Number.isInteger(v)) throw new Error(`range() ${name} must be an integer, got ${String(v)}`);
  if (step === 0) throw new Error('range() step must not be zero');
  const count = Math.max(0, Math.ceil((stop - start) / step));
  if (count > CHAT_TEMPLATE_LIMITS.rangeItems)
    throw new Error(`range() of ${count} items, over ${CHAT_TEMPLATE_LIMITS.rangeItems}`);
  return Array.from({ length: count }, (_, i) => start + i * step);
}

/** `strftime_now(format)` as transformers gives templates: the local time, `%Y %m %d %b %B %H %M %%`. */
function strftimeNow(format: string): string {
  const now = new Date();
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(now.getFullYear());
      case '%m':
        return pad2(now.getMonth() + 1);
      case '%d':
        return pad2(now.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(now);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(now);
      case '%H':
        return pad2(now.getHours());
      case '%M':
        return pad2(now.getMinutes());
      default:
        return '%';
    }
  });
}

/**
 * Render a Jinja chat template with `context` (messages, special tokens, flags) as `@huggingface/jinja`'s `Template`
 * does (blocks' whitespace trimmed: `trim_blocks`, `lstrip_blocks`), the same globals (`raise_exception`, `range`,
 * `strftime_now`, `namespace`, the booleans and none), within {@link CHAT_TEMPLATE_LIMITS}. Throws a plain `Error`
 * for a template that does not parse, raises, or goes past a limit (the caller names the file).
 */
export function renderChatTemplate(template: string, context: Record<string, unknown>): string {
  const program = parse(tokenize(template, { lstrip_blocks: true, trim_blocks: true }));
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (message: unknown) => {
      throw new Error(String(message));
    },
    range: boundedRange,
    strftime_now: strftimeNow,
  };
  for (const [name, value] of Object.entries({ ...globals, ...context })) env.set(name, value);
  const result = new BudgetedInterpreter(env).run(program);
  return String((result as { value?: unknown }).value);
}
