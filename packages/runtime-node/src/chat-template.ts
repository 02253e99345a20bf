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
   * mapping an evaluation makes, looks up or prints (a list only its length or one item is taken of excepted), and 40
   * per item of a list a loop runs over (an iteration costs about 4 µs, even with an empty body, which evaluates nothing). Deterministic, unlike a time limit: about a second of work here at most; a conversation of 1000 messages
   * of 2 KB takes about 1 % of it.
   */
  steps: 10_000_000,
  /**
   * Characters of any string value, the rendered prompt included, and of what any list or mapping the template makes
   * prints as (4 Mi: about a million tokens).
   */
  stringChars: 1 << 22,
  /** Items of any list value. */
  listItems: 1 << 20,
} as const;

/** The parts of `@huggingface/jinja`'s syntax nodes the budget and the Python semantics read. */
interface TemplateNode {
  type?: string;
  iterable?: TemplateNode;
  /** A `for` loop's variables (an `Identifier` or a `TupleLiteral`); a `SelectExpression`'s list (`for x in xs if …`). */
  loopvar?: TemplateNode;
  lhs?: TemplateNode;
  operand?: TemplateNode;
  filter?: TemplateNode;
  object?: TemplateNode;
  property?: TemplateNode;
  computed?: boolean;
  /** An identifier's name; a literal's value. */
  value?: unknown;
  operator?: { value?: string };
  left?: TemplateNode;
  right?: TemplateNode;
  callee?: TemplateNode;
  args?: TemplateNode[];
  /** A statement's blocks (`If`'s `alternate`, `For`'s `defaultBlock`). */
  body?: TemplateNode[];
  alternate?: TemplateNode[];
  defaultBlock?: TemplateNode[];
}

/** What this module reads of the library's runtime values (`StringValue`, `ArrayValue`, `ObjectValue`, …). */
interface RuntimeValue {
  type: string;
  value: unknown;
  __bool__(): { value: boolean };
}

/** The environment's parts used here: the tests (`defined`, `none`, …) and the variables. */
interface TemplateEnvironment {
  tests: Map<string, (...args: unknown[]) => boolean>;
  lookupVariable(name: string): RuntimeValue;
  setVariable(name: string, value: RuntimeValue): void;
}

/** A syntax node standing for a value already evaluated (so the library's own code can take it without redoing it). */
const EVALUATED = 'CalderaEvaluatedValue';
const evaluated = (v: RuntimeValue): TemplateNode => ({ type: EVALUATED, value: v });

/** A syntax node standing for an expression a block prints (`{{ x }}`), written as Python's `str` writes it. */
const PRINTED = 'CalderaPrintedExpression';

/** The nodes of `@huggingface/jinja` that are statements (any other node in a block is an expression it prints). */
const STATEMENTS = new Set([
  'Program',
  'If',
  'For',
  'Break',
  'Continue',
  'Set',
  'Macro',
  'Comment',
  'FilterStatement',
  'CallStatement',
]);

/**
 * The expressions the blocks of `statements` print (`{{ x }}`: any block, nested ones, macros', `set` blocks'), each
 * wrapped in a {@link PRINTED} node: the library printed them with JavaScript's `toString` (JSON for a list, `true`,
 * nothing for none), and reads its blocks in a method it keeps private. Literal text is left as it is. A wrapper is of
 * its expression's class, so the library's scan of a macro's body (does it read `kwargs`?) still goes into it.
 */
function markPrinted(statements: TemplateNode[]): void {
  statements.forEach((node, i) => {
    if (!STATEMENTS.has(node.type!)) {
      if (node.type !== 'StringLiteral')
        statements[i] = Object.assign(Object.create(Object.getPrototypeOf(node) as object) as TemplateNode, {
          type: PRINTED,
          value: node,
        });
      return;
    }
    for (const block of [node.body, node.alternate, node.defaultBlock]) if (block) markPrinted(block);
  });
}

/** A new runtime value of `like`'s class (the library does not export its value classes). */
function sameKind<T>(like: RuntimeValue, value: T): RuntimeValue {
  return new (like.constructor as new (value: T) => RuntimeValue)(value);
}

/** A runtime boolean (of the library's class, taken from a value's truth). */
function runtimeBoolean(like: RuntimeValue, value: boolean): RuntimeValue {
  return sameKind(like.__bool__() as unknown as RuntimeValue, value);
}

const NUMERIC_TYPES = new Set(['IntegerValue', 'FloatValue', 'BooleanValue']);

/**
 * Python's `==` on template values, as transformers' Jinja (jinja2) evaluates it: numbers and booleans by value (True
 * == 1), strings only to strings, lists (and tuples) and mappings item by item, none only to none. The library used
 * JavaScript's loose `==` of the raw values: `'' == false` was true (Llama 2's `system_message != false` dropped an
 * empty system prompt), while `[1] == [1]` was false.
 */
export function pythonEquals(a: RuntimeValue, b: RuntimeValue): boolean {
  const numeric = NUMERIC_TYPES.has(a.type);
  if (numeric || NUMERIC_TYPES.has(b.type))
    return numeric && NUMERIC_TYPES.has(b.type) && Number(a.value) === Number(b.value);
  if (Array.isArray(a.value) || Array.isArray(b.value)) {
    const [x, y] = [a.value, b.value];
    return (
      a.type === b.type &&
      Array.isArray(x) &&
      Array.isArray(y) &&
      x.length === y.length &&
      x.every((item, i) => pythonEquals(item as RuntimeValue, y[i] as RuntimeValue))
    );
  }
  if (a.value instanceof Map || b.value instanceof Map) {
    const [x, y] = [a.value, b.value];
    if (!(x instanceof Map && y instanceof Map) || x.size !== y.size) return false;
    for (const [k, v] of x)
      if (!y.has(k) || !pythonEquals(v as RuntimeValue, y.get(k) as RuntimeValue)) return false;
    return true;
  }
  return a.type === b.type && a.value === b.value;
}

/** The characters Python's `str.strip()` removes by default (`str.isspace`); JavaScript's `trim` differs (U+FEFF, U+001C–U+001F, U+0085). */
const PYTHON_WHITESPACE = new Set(
  [
    9, 10, 11, 12, 13, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f,
    0x3000,
  ]
    .concat(Array.from({ length: 11 }, (_, i) => 0x2000 + i))
    .map((c) => String.fromCodePoint(c)),
);

/** Python's `s.strip(chars)` (`lstrip` with `end` false, `rstrip` with `start` false); `chars` null: whitespace. */
export function pythonStrip(s: string, chars: string | null, start = true, end = true): string {
  const strip = chars === null ? PYTHON_WHITESPACE : new Set(Array.from(chars));
  const cps = Array.from(s);
  let i = 0;
  let j = cps.length;
  if (start) while (i < j && strip.has(cps[i]!)) i++;
  if (end) while (j > i && strip.has(cps[j - 1]!)) j--;
  return i === 0 && j === cps.length ? s : cps.slice(i, j).join('');
}

/** Python's type names, for the errors Python raises where it refuses a value. */
const PYTHON_TYPES: Record<string, string> = {
  StringValue: 'str',
  IntegerValue: 'int',
  FloatValue: 'float',
  BooleanValue: 'bool',
  NullValue: 'NoneType',
  UndefinedValue: 'Undefined',
  ArrayValue: 'list',
  TupleValue: 'tuple',
  ObjectValue: 'dict',
  KeywordArgumentsValue: 'dict',
  NamespaceValue: 'Namespace',
  FunctionValue: 'function',
};

/**
 * Python's `repr` of a float (which `str` and printing use too): the shortest digits that read back, as
 * JavaScript's, but written as Python writes them: `1.0` (JavaScript: `1`), `1e-05` (`0.00001`), `1e+16`
 * (`10000000000000000`), `inf`, `nan`.
 */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [digits, exponent] = x.toExponential().split('e') as [string, string];
  const e = Number(exponent);
  // Python writes an exponent outside 1e-4 <= |x| < 1e16 (JavaScript outside 1e-7 ... 1e21), of two digits at least
  if (e < -4 || e >= 16) return `${digits}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  const fixed = String(x);
  return fixed.includes('.') ? fixed : `${fixed}.0`;
}

/** Python's `repr` of an int: every digit (JavaScript writes `1e+21` from 10**21, and `2**100` so). */
function pythonIntRepr(n: number): string {
  return Number.isSafeInteger(n) || !Number.isInteger(n) ? String(n) : BigInt(n).toString();
}

/** The characters `str.isprintable` refuses (`repr` escapes them): Unicode's "Other" and "Separator" but the space. */
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/**
 * Python's `repr` of a str, as a list or mapping prints its strings: single quotes, double where the string holds a
 * single quote and no double one; `\\`, the quote, `\n`, `\r`, `\t` escaped, other unprintable characters as `\x..`,
 * `\u....` or `\U........` (printable non-ASCII ones as they are). Whether a character is printable follows this
 * runtime's Unicode tables, which may be newer than the Python's for characters assigned lately.
 */
export function pythonStringRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  const hex = (cp: number, width: number) => cp.toString(16).padStart(width, '0');
  // everything but printable ASCII other than ' and \ (by code point: a lone surrogate is one, and unprintable)
  const body = s.replace(/[^\x20-\x26\x28-\x5b\x5d-\x7e]/gu, (c) => {
    if (c === quote || c === '\\') return `\\${c}`;
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    const cp = c.codePointAt(0)!;
    if (cp < 0x20 || cp === 0x7f) return `\\x${hex(cp, 2)}`;
    if (cp < 0x7f || !NOT_PRINTABLE.test(c)) return c;
    return cp <= 0xff ? `\\x${hex(cp, 2)}` : cp <= 0xffff ? `\\u${hex(cp, 4)}` : `\\U${hex(cp, 8)}`;
  });
  return quote + body + quote;
}

/** Python's `repr` of the lists the `range()` of {@link renderChatTemplate} made: `range(0, 3)`, `range(1, 9, 2)`. */
const RANGES = new WeakMap<object, string>();

/** The lists the library made of a mapping's `items()`, `keys()`, `values()`: Python's `dict_items` and so on. */
const DICT_VIEWS = new WeakMap<object, string>();

/** The types of the library's mappings (a namespace is none: it has no `items()`, and Python's `%` takes no keys of it). */
const MAPPINGS = new Set(['ObjectValue', 'KeywordArgumentsValue']);

/** A list of `items`, of the library's list class (a tuple's class is a subclass of it; the library exports neither). */
function listOf(like: RuntimeValue, items: RuntimeValue[]): RuntimeValue {
  const list: unknown =
    like.type === 'TupleValue' ? Object.getPrototypeOf(like.constructor) : like.constructor;
  return new (list as new (value: RuntimeValue[]) => RuntimeValue)(items);
}

/**
 * `v` with its tuples, at any depth, made lists (the library's `tojson` refused a tuple: Python's `json.dumps` writes
 * it as a list); `v` itself where it holds none.
 */
function withoutTuples(v: RuntimeValue, open = new Set<unknown>()): RuntimeValue {
  const x = v.value;
  if ((!Array.isArray(x) && !(x instanceof Map)) || open.has(x)) return v;
  open.add(x);
  let made: RuntimeValue = v;
  if (Array.isArray(x)) {
    const items = (x as RuntimeValue[]).map((item) => withoutTuples(item, open));
    if (v.type === 'TupleValue' || items.some((item, i) => item !== x[i])) made = listOf(v, items);
  } else {
    const entries = [...(x as Map<string, RuntimeValue>)].map(
      ([k, item]) => [k, withoutTuples(item, open)] as const,
    );
    if (entries.some(([k, item]) => item !== x.get(k))) made = sameKind(v, new Map(entries));
  }
  open.delete(x);
  return made;
}

/**
 * A value as Python's `repr` writes it (`str` of a list or mapping is that too): `True`, `None`, `[1, 'a']`,
 * `{'k': 1.0}`, `(1,)`, `<Namespace {'a': 1}>`, `Undefined` for an undefined item; a list or mapping inside itself
 * (a namespace holding itself) as `[...]` / `{...}`, as Python. The library wrote JSON (`true`, `null`, `"a"`).
 * Throws past `limit` characters, before making more; `items`: the items of lists and mappings it went through.
 */
export function pythonRepr(v: RuntimeValue, limit = Infinity): { text: string; items: number } {
  let length = 0;
  let items = 0;
  const open = new Set<unknown>();
  /** `s`, counted against `limit` (a list's or mapping's brackets and separators as its items are). */
  const counted = (s: string, more = 0) => {
    length += s.length + more;
    if (length > limit) throw new Error(`it made a string of over ${limit} characters (printing a value)`);
    return s;
  };
  const repr = (x: RuntimeValue): string => {
    const value = x.value;
    if (Array.isArray(value)) {
      const range = RANGES.get(x);
      if (range !== undefined) return counted(range);
      if (open.has(value)) return counted('[...]');
      open.add(value);
      items += value.length;
      counted('', 2 * value.length + 1);
      const inner = (value as RuntimeValue[]).map(repr).join(', ');
      open.delete(value);
      const view = DICT_VIEWS.get(x);
      if (view !== undefined) return `${counted(view)}([${inner}])`;
      if (x.type !== 'TupleValue') return `[${inner}]`;
      return value.length === 1 ? `(${inner},)` : `(${inner})`;
    }
    if (value instanceof Map) {
      const namespace = x.type === 'NamespaceValue';
      if (open.has(value)) return counted(namespace ? '<Namespace {...}>' : '{...}');
      open.add(value);
      items += value.size;
      counted('', 4 * value.size + (namespace ? 13 : 1));
      const entries: string[] = [];
      for (const [k, item] of value as Map<string, RuntimeValue>)
        entries.push(`${counted(pythonStringRepr(k))}: ${repr(item)}`);
      open.delete(value);
      return namespace ? `<Namespace {${entries.join(', ')}}>` : `{${entries.join(', ')}}`;
    }
    switch (x.type) {
      case 'StringValue':
        return counted(pythonStringRepr(value as string));
      case 'IntegerValue':
        return counted(pythonIntRepr(value as number));
      case 'FloatValue':
        return counted(pythonFloatRepr(value as number));
      case 'BooleanValue':
        return counted(value ? 'True' : 'False');
      case 'NullValue':
        return counted('None');
      case 'UndefinedValue':
        return counted('Undefined');
      default:
        return counted(String(x));
    }
  };
  return { text: repr(v), items };
}

/**
 * Python's `str` of a value, what `{{ x }}`, `~`, `|string` and `|join` write: a string as it is, undefined as
 * nothing, anything else as {@link pythonRepr}.
 */
export function pythonStr(v: RuntimeValue, limit = Infinity): { text: string; items: number } {
  if (v.type === 'StringValue') return { text: v.value as string, items: 0 };
  if (v.type === 'UndefinedValue') return { text: '', items: 0 };
  return pythonRepr(v, limit);
}

/**
 * Python's refusal of `+` between a string and anything else (`'a' + 1`, `'x' + message['content']` with content
 * given as a list of parts, `[1] + 'a'`): the library wrote both as strings, JSON for a list. (Undefined is left to
 * the library, which refuses it too.) Also between a tuple and a list, which the library made a list of.
 */
function checkConcatenation(left: RuntimeValue, right: RuntimeValue): void {
  const sequences = ['ArrayValue', 'TupleValue'];
  if (sequences.includes(left.type) && sequences.includes(right.type) && left.type !== right.type) {
    const [l, r] = [left, right].map((v) => PYTHON_TYPES[v.type]);
    throw new Error(`can only concatenate ${l} (not "${r}") to ${l}`);
  }
  if ((left.type === 'StringValue') === (right.type === 'StringValue')) return;
  if (left.type === 'UndefinedValue' || right.type === 'UndefinedValue') return;
  const [l, r] = [left, right].map((v) => PYTHON_TYPES[v.type] ?? v.type);
  throw new Error(
    ['str', 'list', 'tuple'].includes(l!)
      ? `can only concatenate ${l} (not "${r}") to ${l}`
      : `unsupported operand type(s) for +: '${l}' and '${r}'`,
  );
}

/** ZeroDivisionError's messages (Python 3.11's), for an int divisor and a float one. */
const ZERO_DIVISION = {
  '/': ['division by zero', 'float division by zero'],
  '//': ['integer division or modulo by zero', 'float floor division by zero'],
  '%': ['integer modulo by zero', 'float modulo'],
} as const;

/**
 * Python's `/`, `//` and `%` of two numbers (`float`: either is a float; the result is one then, and always of `/`):
 * the modulo takes the divisor's sign (`-7 % 3` is 2, `7 % -3` is -2) and `//` floors as CPython's `divmod` does
 * (`1 // 0.1` is 9.0, not `Math.floor(1 / 0.1)`'s 10); a zero divisor is Python's ZeroDivisionError. The library used
 * JavaScript's `%` (`-7 % 3` was -1) and printed `5 / 0` as inf, `5 // 0` as Infinity and `5 % 0` as NaN.
 */
export function pythonDivision(op: '/' | '//' | '%', a: number, b: number, float: boolean): number {
  if (b === 0) throw new Error(ZERO_DIVISION[op][float ? 1 : 0]);
  if (op === '/') return a / b;
  // CPython's float_divmod (exact for integers as well): JavaScript's `%` is C's fmod
  let mod = a % b;
  let div = (a - mod) / b;
  // a zero modulo takes the divisor's sign as a float (`0.0 % -5` is -0.0); an int has no -0 (`5 % -5` is 0)
  if (mod === 0) mod = float && b < 0 ? -0 : 0;
  else if (b < 0 !== mod < 0) {
    mod += b;
    div -= 1;
  }
  if (op === '%') return mod;
  if (div === 0) return float && (a / b < 0 || Object.is(a / b, -0)) ? -0 : 0; // (Python's -0.0 // 1 is -0.0; 0 // -1 is 0)
  const floor = Math.floor(div);
  return div - floor > 0.5 ? floor + 1 : floor;
}

/**
 * The exact decimal digits of `x` (finite, not negative): `x` = 0.`digits` × 10^`point`, the first digit not 0 and
 * no trailing 0 (`digits` empty for 0). A double is m × 2^k, whose decimal expansion ends: 767 significant digits at
 * most (Python's `Decimal` of 0x000fffffffffffff's double), every later one a 0.
 */
function exactDigits(x: number): { digits: string; point: number } {
  if (x === 0) return { digits: '', point: 1 };
  FLOAT_BITS.setFloat64(0, x);
  const biased = (FLOAT_BITS.getUint32(0) >>> 20) & 0x7ff;
  let m = FLOAT_BITS.getBigUint64(0) & ((1n << 52n) - 1n);
  let k = -1074;
  if (biased > 0) [m, k] = [m | (1n << 52n), biased - 1075];
  // m × 2^k is m × 5^-k × 10^k; without a fraction (k ≥ 0, or m a whole number of 2^-k) as a number's own digits
  let s: string;
  if (k >= 0) s = x < 2 ** 53 ? String(x) : (m << BigInt(k)).toString();
  else {
    let power = POWERS_OF_5.get(k);
    if (power === undefined) POWERS_OF_5.set(k, (power = 5n ** BigInt(-k)));
    s = (m * power).toString();
  }
  return { digits: s.replace(/0+$/, ''), point: s.length + Math.min(k, 0) };
}

/** {@link exactDigits}'s view of a double's bits. */
const FLOAT_BITS = new DataView(new ArrayBuffer(8));

/** 5^-k for the binary exponents k < 0 {@link exactDigits} met (1074 at most, of 2 500 bits at most). */
const POWERS_OF_5 = new Map<number, bigint>();

/** `d` ({@link exactDigits}) rounded half to even to its first `keep` digits (none or fewer: to 0 or one unit). */
function roundDigits(d: { digits: string; point: number }, keep: number): { digits: string; point: number } {
  const { digits, point } = d;
  if (digits.length <= keep) return d;
  if (keep < 0) return { digits: '', point }; // (under a tenth of the unit kept)
  const next = digits.charCodeAt(keep) - 48;
  const last = keep > 0 ? digits.charCodeAt(keep - 1) - 48 : 0;
  const kept = digits.slice(0, keep);
  // a tie (a 5 and nothing after it, exactly: the digits are the binary value's) goes to the even digit
  if (!(next > 5 || (next === 5 && (digits.length > keep + 1 || last % 2 === 1))))
    return { digits: kept.replace(/0+$/, ''), point };
  let i = keep - 1;
  while (i >= 0 && kept[i] === '9') i--;
  return i < 0
    ? { digits: '1', point: point + 1 }
    : { digits: kept.slice(0, i) + String(Number(kept[i]) + 1), point };
}

/**
 * `x` (finite, not negative: its {@link exactDigits}) with `decimals` decimals (`exponential`: of the form `d.ddde+NN`), rounded as Python
 * rounds: half to even on the exact binary value (JavaScript's `toFixed` and `toExponential` round a tie up:
 * `'%.2f' % 0.125` is 0.12 to Python, 0.13 to them, and stop at 100 decimals), every digit exact.
 */
function roundedDigits(
  exact: { digits: string; point: number },
  decimals: number,
  exponential: boolean,
): string {
  const { digits, point } = roundDigits(exact, exponential ? decimals + 1 : exact.point + decimals);
  if (exponential) {
    const all = digits.padEnd(decimals + 1, '0');
    const e = digits === '' ? 0 : point - 1;
    const mantissa = decimals > 0 ? `${all[0]!}.${all.slice(1)}` : all;
    return `${mantissa}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  }
  const whole = digits === '' || point <= 0 ? '0' : digits.slice(0, point).padEnd(point, '0');
  if (decimals === 0) return whole;
  const fraction = digits === '' ? '' : point >= 0 ? digits.slice(point) : '0'.repeat(-point) + digits;
  return `${whole}.${fraction.padEnd(decimals, '0')}`;
}

/**
 * Python's `%e`, `%f`, `%g` digits of `x` (not negative) with `precision` (`alternate`: the `#` flag); `exact`: how
 * many exact digits it went through (767 for the smallest doubles, the slowest: about 15 µs).
 */
function floatDigits(
  type: string,
  x: number,
  precision: number,
  alternate: boolean,
): { text: string; exact: number } {
  if (!Number.isFinite(x)) return { text: Number.isNaN(x) ? 'nan' : 'inf', exact: 0 };
  const exact = exactDigits(x);
  let text: string;
  if (type === 'g') {
    // (without `#`, digits past 800 change nothing: a double has 767 significant digits at most, the exponent is
    // under 309, and the zeros after them go; `'%.4194000g' % 0.1` made 4 M zeros to remove)
    const p = Math.max(Math.min(precision, alternate ? Infinity : 800), 1);
    // the exponent x has rounded to `p` digits decides between the two forms
    const rounded = roundDigits(exact, p);
    const e = rounded.digits === '' ? 0 : rounded.point - 1;
    text = e >= -4 && e < p ? roundedDigits(exact, p - 1 - e, false) : roundedDigits(exact, p - 1, true);
    if (!alternate && text.includes('.')) {
      // the mantissa's trailing zeros and point go
      const end = text.includes('e') ? text.indexOf('e') : text.length;
      let j = end;
      while (text[j - 1] === '0') j--;
      if (text[j - 1] === '.') j--;
      text = text.slice(0, j) + text.slice(end);
    }
  } else text = roundedDigits(exact, precision, type === 'e');
  if (alternate && !text.includes('.')) text = text.replace(/(?=e|$)/, '.');
  return { text, exact: exact.digits.length };
}

/** The conversions of Python's printf-style `%`: `%`, a mapping key, flags, width, precision, length, the type. */
const CONVERSION = /%(?:\(([^)]*)\))?([-+ #0]*)(\*|\d+)?(?:\.(\*|\d*))?[hlL]?/y;

/**
 * Where the first `n` code points of `s` end (Python's `s[:n]`: a lone surrogate is one), and how many there are, at
 * most `n`: scanning no further (`'%.1s' % s` went through all of a long `s`).
 */
function codePointPrefix(s: string, n: number): { end: number; count: number } {
  let end = 0;
  let count = 0;
  for (; count < n && end < s.length; count++) end += s.codePointAt(end)! > 0xffff ? 2 : 1;
  return { end, count };
}

/**
 * Python's `format % values` (printf-style: `'%s' % x`, `'%d items' % n`, `'%s and %s' % (a, b)`,
 * `'%(name)s' % mapping`): the conversions `s r a d i u x X o e E f F g G c %` with flags, width and precision, the
 * values a tuple's items or a single value, and Python's errors (too many or too few values, a number required…).
 * The library refused a string's `%`. Throws past `limit` characters, before making more; `items`: the items of
 * lists and mappings written; `chars`: the characters it went through and made (the format, each value's text in
 * full where a precision keeps part of it, the digits of a number, the result), for the caller's budget.
 */
export function pythonFormat(
  format: string,
  values: RuntimeValue,
  limit = Infinity,
): { text: string; items: number; chars: number } {
  // Python takes any value but a tuple or string that has items as a mapping: `%(key)s` looks keys up in it, and it
  // need not be consumed
  const mapping =
    values.type !== 'TupleValue' &&
    values.type !== 'NamespaceValue' &&
    (values.value instanceof Map || Array.isArray(values.value))
      ? values
      : undefined;
  // CPython's state (PyUnicode_Format): the values a conversion takes from (a tuple's items, else the one value), how
  // many (-1: one, not a tuple) and the next one's index (-2 before the one value is taken, -1 after); a mapping key
  // makes its value the one value (so a conversion without a key after it has none left: `'%(a)s %s' % {'a': 1}`
  // is Python's "not enough arguments")
  let current = values;
  let count = values.type === 'TupleValue' ? (values.value as RuntimeValue[]).length : -1;
  let next = count < 0 ? -2 : 0;
  let length = 0;
  let items = 0;
  let chars = format.length;
  const out: string[] = [];
  const counted = (s: string) => {
    length += s.length;
    if (length > limit) throw new Error(`it made a string of over ${limit} characters (formatting a string)`);
    out.push(s);
  };
  const typeName = (v: RuntimeValue) => PYTHON_TYPES[v.type] ?? v.type;
  const nextArg = () => {
    if (next >= count) throw new Error('not enough arguments for format string');
    const index = next++;
    return count < 0 ? current : (current.value as RuntimeValue[])[index]!;
  };
  const size = (v: RuntimeValue) => {
    if (v.type !== 'IntegerValue' && v.type !== 'BooleanValue') throw new Error('* wants int');
    return Number(v.value);
  };
  let i = 0;
  while (i < format.length) {
    const at = format.indexOf('%', i);
    counted(format.slice(i, at < 0 ? format.length : at));
    if (at < 0) break;
    CONVERSION.lastIndex = at;
    const [spec, key, flags, widthSpec, precisionSpec] = CONVERSION.exec(format)!;
    const type = format[at + spec.length];
    if (key === undefined && format[at + 1] === '(') throw new Error('incomplete format key');
    if (type === undefined) throw new Error('incomplete format');
    i = at + spec.length + 1;
    if (type === '%' && spec === '%') {
      counted('%');
      continue;
    }
    if (key !== undefined) {
      if (!mapping) throw new Error('format requires a mapping');
      if (Array.isArray(mapping.value)) throw new Error('list indices must be integers or slices, not str');
      const found = (mapping.value as Map<string, RuntimeValue>).get(key);
      if (found === undefined) throw new Error(`KeyError: ${pythonStringRepr(key)}`);
      [current, count, next] = [found, -1, -2];
    }
    let width = widthSpec === '*' ? size(nextArg()) : Number(widthSpec ?? 0);
    let left = flags!.includes('-');
    if (width < 0) [width, left] = [-width, true];
    // (a negative `*` precision is 0, as Python's: `'%.*s' % (-1, 'abc')` is '')
    const precision =
      precisionSpec === undefined
        ? undefined
        : precisionSpec === '*'
          ? Math.max(size(nextArg()), 0)
          : Number(precisionSpec);
    if (width > limit || (precision ?? 0) > limit)
      throw new Error(`it made a string of over ${limit} characters (formatting a string)`);
    const value = nextArg();
    let sign = '';
    let prefix = '';
    let body: string;
    const lower = type.toLowerCase();
    if ('srac'.includes(type)) {
      if (type === 'c') {
        const s = value.type === 'StringValue' ? (value.value as string) : '';
        if (value.type === 'IntegerValue' || value.type === 'BooleanValue') {
          const cp = Number(value.value);
          if (cp < 0 || cp > 0x10ffff) throw new Error('%c arg not in range(0x110000)');
          body = String.fromCodePoint(cp);
        } else if (s !== '' && codePointPrefix(s, 1).end === s.length) body = s;
        else throw new Error('%c requires int or char');
      } else {
        const written = type === 's' ? pythonStr(value, limit) : pythonRepr(value, limit);
        items += written.items;
        body = written.text;
        // (a string's own text is not made anew: only the part kept is gone through)
        if (!(type === 's' && value.type === 'StringValue')) chars += body.length;
        // ascii(): repr with every non-ASCII character escaped
        if (type === 'a') {
          body = body.replace(/[^\0-\x7f]/gu, (c) => {
            const cp = c.codePointAt(0)!;
            const [p, w] = cp <= 0xff ? ['x', 2] : cp <= 0xffff ? ['u', 4] : ['U', 8];
            return `\\${p}${cp.toString(16).padStart(w, '0')}`;
          });
          chars += body.length;
        }
        if (precision !== undefined) body = body.slice(0, codePointPrefix(body, precision).end);
      }
    } else if ('diuxXoeEfFgG'.includes(type)) {
      const isInteger = value.type === 'IntegerValue' || value.type === 'BooleanValue';
      if (!isInteger && value.type !== 'FloatValue')
        throw new Error(
          'eEfFgG'.includes(type)
            ? `must be real number, not ${typeName(value)}`
            : `%${type} format: ${'xXo'.includes(type) ? 'an integer' : 'a real number'} is required, not ${typeName(value)}`,
        );
      const x = Number(value.value);
      if ('xXo'.includes(type) && !isInteger)
        throw new Error(`%${type} format: an integer is required, not ${typeName(value)}`);
      if ('eEfFgG'.includes(type)) {
        const digits = floatDigits(lower, Math.abs(x), precision ?? 6, flags!.includes('#'));
        body = digits.text;
        // (the exact digits gone through, made of a product as large as 5^1074 for the smallest doubles)
        chars += 64 + 4 * digits.exact;
        if (type !== lower) body = body.toUpperCase();
      } else {
        if (!Number.isFinite(x))
          throw new Error(`cannot convert float ${Number.isNaN(x) ? 'NaN' : 'infinity'} to integer`);
        const n = BigInt(Math.trunc(Math.abs(x)));
        body = n.toString(lower === 'x' ? 16 : type === 'o' ? 8 : 10);
        if (type === 'X') body = body.toUpperCase();
        if (flags!.includes('#') && type !== lower) prefix = '0X';
        else if (flags!.includes('#') && 'xo'.includes(type)) prefix = `0${type}`;
        if (precision !== undefined) body = body.padStart(precision, '0');
      }
      // (an int's sign is its truncation's: int(-0.5) is 0; a float's its own: -0.0 is negative)
      const negative = 'eEfFgG'.includes(type) ? x < 0 || Object.is(x, -0) : Math.trunc(x) < 0;
      sign = negative ? '-' : flags!.includes('+') ? '+' : flags!.includes(' ') ? ' ' : '';
      if (flags!.includes('0') && !left) body = body.padStart(width - sign.length - prefix.length, '0');
    } else {
      const index = Array.from(format.slice(0, at + spec.length)).length;
      throw new Error(
        `unsupported format character '${type}' (0x${type.codePointAt(0)!.toString(16)}) at index ${index}`,
      );
    }
    const text = sign + prefix + body;
    // (its code points counted up to the width only)
    const shown = codePointPrefix(text, width);
    const pad = ' '.repeat(shown.end === text.length ? width - shown.count : 0);
    counted(left ? text + pad : pad + text);
  }
  if (next < count && !mapping) throw new Error('not all arguments converted during string formatting');
  return { text: out.join(''), items, chars: chars + length };
}

const STRIP_SIDES = { strip: [true, true], lstrip: [true, false], rstrip: [false, true] } as const;

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

  /**
   * Characters the value `v` prints as at least (its strings, one per other item and two per list or mapping item;
   * a list held twice counted twice): `[l, l]` repeated doubles what printing it makes while each list it makes holds
   * 2 items (26 rounds: 100 s and 1.8 GB before the string limit could see it). Memoized per value, but not for a
   * value that holds a namespace, the one value a template changes (`set ns.x = …`: sizes remembered while one was
   * small let 200 attributes of 2 M characters through, and a list holding a namespace, doubled, likewise); each list
   * or mapping measured anew is a step of the budget, so re-measuring cannot run unbounded either.
   */
  private readonly printed = new WeakMap<object, number>();
  private measure(v: RuntimeValue, open = new Set<unknown>()): { n: number; live: boolean } {
    const x = v.value;
    if (typeof x === 'string') return { n: x.length, live: false };
    if (!Array.isArray(x) && !(x instanceof Map)) return { n: 1, live: false };
    // a value inside itself (only through a namespace: `set ns.l = [ns]`) prints as `[...]` there, as Python's repr
    // (it recursed until the stack overflowed)
    if (open.has(x)) return { n: v.type === 'NamespaceValue' ? 17 : 5, live: true }; // `<Namespace {...}>`
    const known = this.printed.get(v);
    if (known !== undefined) return { n: known, live: false };
    this.charge(1);
    open.add(x);
    let n = 2;
    let live = v.type === 'NamespaceValue';
    for (const [k, item] of x.entries()) {
      const m = this.measure(item as RuntimeValue, open);
      n += 2 + (typeof k === 'string' ? k.length : 0) + m.n;
      live ||= m.live;
      if (n > CHAT_TEMPLATE_LIMITS.stringChars) break; // (refused: the exact size does not matter)
    }
    open.delete(x);
    if (!live) this.printed.set(v, n);
    return { n, live };
  }

  /** Add `k` steps to the render's count: `Error` past {@link CHAT_TEMPLATE_LIMITS.steps}. */
  private charge(k: number): void {
    this.steps += k;
    if (this.steps > CHAT_TEMPLATE_LIMITS.steps)
      throw new Error(
        `it ran over ${CHAT_TEMPLATE_LIMITS.steps} steps (a runaway loop?): chat templates are bounded`,
      );
  }

  /**
   * The lists and mappings of the caller's context (the conversation), and lists of its items each at most once (a
   * slice such as `messages[1:]`, a `selectattr`): not the template's making, so their size is not held against it (a
   * conversation of 44 messages of 100 000 characters was refused by a template that prints one letter of each); what
   * a template builds of them otherwise still is.
   */
  private readonly inputs = new WeakSet<object>();
  /** Whether `v` is a list of input items, each at most once (then marked as an input itself). */
  private ofInputs(v: RuntimeValue): boolean {
    const x = v.value;
    if (!Array.isArray(x) || x.length === 0) return false;
    const seen = new Set<unknown>();
    for (const item of x) {
      if (!this.inputs.has(item as object) || seen.has(item)) return false;
      seen.add(item);
    }
    this.inputs.add(v);
    return true;
  }

  markInput(v: RuntimeValue): void {
    const x = v.value;
    if ((!Array.isArray(x) && !(x instanceof Map)) || this.inputs.has(v)) return;
    this.inputs.add(v);
    for (const item of x.values()) this.markInput(item as RuntimeValue);
  }

  /**
   * Where transformers' Jinja (Python's jinja2) and the library differ, the value Python gives, else undefined (the
   * library's then): `==`, `!=`, `in`, `not in` with Python equality; `s.strip(chars)`, `lstrip`, `rstrip` and
   * `|trim(chars)` with their argument and Python's whitespace (the library ignored the argument: Qwen3's and QwQ's
   * `content.lstrip('\n')` removed spaces too); `selectattr`/`rejectattr` testing a missing attribute as undefined
   * (the library skipped such items: Mistral Nemo's role-order check never raised); `~`, `|string`, `|join` and
   * `|trim` of any value writing it as Python's `str` (the library wrote JSON, `true`; `|trim` refused a list); `+`
   * of a string and anything else, and `strip` of two arguments, refused as Python refuses them; `/`, `//`, `%` of
   * numbers as Python computes them ({@link pythonDivision}: floor modulo, ZeroDivisionError); `%` of a string as
   * Python's printf-style formatting ({@link pythonFormat}; the library refused it); a mapping's `items()`, `|items`
   * and `|dictsort` as tuples, its `items()`, `keys()`, `values()` printed as Python's views (`dict_keys([…])`), a
   * tuple unpacked by `for a, b in …`, turned a list by `|list` and written as a list by `|tojson` (the library
   * refused all three).
   */
  private python(node: TemplateNode, env: TemplateEnvironment): RuntimeValue | undefined {
    // each branch leaves to the library a node whose parts it evaluated already (where Python agrees with it)
    if (node.type === 'BinaryExpression' && node.left?.type !== EVALUATED) {
      const op = node.operator?.value;
      if (!['==', '!=', 'in', 'not in', '~', '+', '/', '//', '%'].includes(op!)) return undefined;
      const left = this.value(node.left, env);
      const right = this.value(node.right, env);
      if (op === '%' && left.type === 'StringValue') {
        const { text, items, chars } = pythonFormat(
          left.value as string,
          right,
          CHAT_TEMPLATE_LIMITS.stringChars,
        );
        // what it went through, at the rate of a string made (`'%.1s' % (s,)` of a long s, repeated, was free)
        this.charge(4 * items + Math.ceil(chars / 16));
        return this.string(text, env);
      }
      if (
        (op === '/' || op === '//' || op === '%') &&
        ['IntegerValue', 'FloatValue'].includes(left.type) &&
        ['IntegerValue', 'FloatValue'].includes(right.type)
      ) {
        const float = left.type === 'FloatValue' || right.type === 'FloatValue';
        const result = pythonDivision(op, left.value as number, right.value as number, float);
        return this.value(
          { type: float || op === '/' ? 'FloatLiteral' : 'IntegerLiteral', value: result },
          env,
        );
      }
      if (op === '==' || op === '!=')
        return runtimeBoolean(left, pythonEquals(left, right) === (op === '=='));
      if (op === '~') return this.string(this.str(left) + this.str(right), env);
      if (op === '+') checkConcatenation(left, right);
      if (op === '+' && left.type === 'TupleValue' && right.type === 'TupleValue')
        return sameKind(left, [...(left.value as RuntimeValue[]), ...(right.value as RuntimeValue[])]);
      if (!['in', 'not in'].includes(op!) || !Array.isArray(right.value))
        return this.value({ ...node, left: evaluated(left), right: evaluated(right) }, env);
      const member = (right.value as RuntimeValue[]).some((item) => pythonEquals(left, item));
      return runtimeBoolean(left, member === (op === 'in'));
    }
    if (
      node.type === 'CallExpression' &&
      node.callee?.type === 'MemberExpression' &&
      node.callee.object?.type !== EVALUATED &&
      !node.callee.computed &&
      ['items', 'keys', 'values'].includes(node.callee.property?.value as string) &&
      (node.args ?? []).length === 0
    ) {
      // a mapping's items as tuples, the three printed as Python's views: `dict_items([('a', 1)])`
      const object = this.value(node.callee.object, env);
      const made = this.value({ ...node, callee: { ...node.callee, object: evaluated(object) } }, env);
      if (!MAPPINGS.has(object.type) || !Array.isArray(made.value)) return made;
      const view = node.callee.property!.value === 'items' ? this.tuples(made, env) : made;
      DICT_VIEWS.set(view, `dict_${String(node.callee.property!.value)}`);
      return view;
    }
    if (node.type === 'For' && node.loopvar?.type === 'TupleLiteral' && node.iterable) {
      // `for k, v in pairs`: the library unpacked lists only, not tuples (`for a, b in [(1, 2)]` was an error)
      const select = node.iterable.type === 'SelectExpression';
      const listNode = select ? node.iterable.lhs : node.iterable;
      if (listNode?.type === EVALUATED) return undefined;
      const list = this.value(listNode, env); // (charged as the loop's list, as it was)
      const items = list.value;
      const unpackable =
        Array.isArray(items) && items.some((item) => (item as RuntimeValue).type === 'TupleValue')
          ? sameKind(
              list,
              (items as RuntimeValue[]).map((item) =>
                item.type === 'TupleValue' ? listOf(item, item.value as RuntimeValue[]) : item,
              ),
            )
          : list;
      const iterable = select ? { ...node.iterable, lhs: evaluated(unpackable) } : evaluated(unpackable);
      // (the library's own evaluation: this one charges what the loop prints, once)
      return super.evaluate({ ...node, iterable } as never, env as never) as unknown as RuntimeValue;
    }
    if (
      node.type === 'CallExpression' &&
      node.callee?.type === 'MemberExpression' &&
      node.callee.object?.type !== EVALUATED &&
      !node.callee.computed &&
      node.callee.property?.type === 'Identifier' &&
      Object.hasOwn(STRIP_SIDES, node.callee.property.value as string)
    ) {
      const object = this.value(node.callee.object, env);
      const call = { ...node, callee: { ...node.callee, object: evaluated(object) } };
      if (object.type !== 'StringValue') return this.value(call, env);
      const name = node.callee.property.value as keyof typeof STRIP_SIDES;
      // Python's TypeError (the library ignored the arguments: `s.strip('a', 'b')` stripped whitespace)
      if ((node.args ?? []).length > 1)
        throw new Error(`${name} expected at most 1 argument, got ${node.args!.length}`);
      const [start, end] = STRIP_SIDES[name];
      return this.stripped(object, node.args?.[0], env, start, end);
    }
    if (node.type === 'FilterExpression' && node.filter && node.operand?.type !== EVALUATED) {
      const f = node.filter;
      const name = f.type === 'CallExpression' ? f.callee?.value : f.value;
      const filterArgs = f.type === 'CallExpression' ? (f.args ?? []) : [];
      if (name === 'trim') {
        if (filterArgs.length > 1)
          throw new Error(`trim expected at most 1 argument, got ${filterArgs.length}`);
        // of any value: its `str` (jinja2's `do_trim`); the library refused a list (content given as parts)
        return this.stripped(this.stringOf(node.operand!, env), filterArgs[0], env, true, true);
      }
      if (name === 'string' && f.type === 'Identifier') return this.stringOf(node.operand!, env);
      if ((name === 'items' && f.type === 'Identifier') || name === 'dictsort') {
        // a mapping's (key, value) pairs as tuples (the library made lists: `[['a', 1]]`)
        const operand = this.value(node.operand, env);
        const made = this.value({ ...node, operand: evaluated(operand) }, env);
        return MAPPINGS.has(operand.type) && Array.isArray(made.value) ? this.tuples(made, env) : made;
      }
      if (name === 'list' && f.type === 'Identifier') {
        // a list of a tuple, a range or a mapping's view (the library returned a tuple as it was)
        const operand = this.value(node.operand, env);
        if (operand.type === 'TupleValue' || RANGES.has(operand) || DICT_VIEWS.has(operand))
          return listOf(operand, [...(operand.value as RuntimeValue[])]);
        return this.value({ ...node, operand: evaluated(operand) }, env);
      }
      if (name === 'tojson') {
        const operand = this.value(node.operand, env);
        return this.value({ ...node, operand: evaluated(withoutTuples(operand)) }, env);
      }
      if (
        name === 'join' &&
        filterArgs.length <= 1 &&
        filterArgs.every((a) => a.type !== 'KeywordArgumentExpression')
      ) {
        const operand = this.value(node.operand, env);
        if (!Array.isArray(operand.value)) return this.value({ ...node, operand: evaluated(operand) }, env);
        // jinja2's `do_join`: str(separator).join(map(str, items)) (the library joined JavaScript values: `true`, '')
        const separator = filterArgs[0] ? this.str(this.value(filterArgs[0], env)) : '';
        const parts = (operand.value as RuntimeValue[]).map((item) => this.str(item));
        return this.string(parts.join(separator), env);
      }
      if (name === 'selectattr' || name === 'rejectattr') {
        const operand = this.value(node.operand, env);
        const items = operand.value;
        const simple =
          Array.isArray(items) &&
          items.every((i) => (i as RuntimeValue).value instanceof Map) &&
          filterArgs.length >= 1 &&
          filterArgs.every((a) => a.type === 'StringLiteral');
        if (!simple) return this.value({ ...node, operand: evaluated(operand) }, env);
        const [attr, testName, arg] = filterArgs.map((a) => this.value(a, env));
        const test = testName === undefined ? undefined : env.tests.get(testName.value as string);
        if (testName !== undefined && !test) throw new Error(`Unknown test: ${String(testName.value)}`);
        const missing = env.lookupVariable('\u0000caldera: no such attribute');
        const kept = (items as RuntimeValue[]).filter((item) => {
          const a = ((item.value as Map<string, RuntimeValue>).get(attr!.value as string) ??
            missing) as RuntimeValue;
          const passed = test ? test(a, arg) : a.__bool__().value;
          return passed === (name === 'selectattr');
        });
        return sameKind(operand, kept);
      }
    }
    return undefined;
  }

  /** The list of pairs `pairs` (the library's lists) with each pair a tuple, as Python's `dict.items()` gives them. */
  private tuples(pairs: RuntimeValue, env: TemplateEnvironment): RuntimeValue {
    // the library's tuple class, which it does not export, is that of a tuple literal
    const tuple = this.value({ type: 'TupleLiteral', value: [] }, env);
    return sameKind(
      pairs,
      (pairs.value as RuntimeValue[]).map((p) =>
        p.type === 'ArrayValue' ? sameKind(tuple, p.value as RuntimeValue[]) : p,
      ),
    );
  }

  /** `s.strip(chars)` of the string value `s` with `charsNode` (absent or none: whitespace). */
  private stripped(
    s: RuntimeValue,
    charsNode: TemplateNode | undefined,
    env: TemplateEnvironment,
    start: boolean,
    end: boolean,
  ): RuntimeValue {
    const chars = charsNode === undefined ? undefined : this.value(charsNode, env);
    if (chars !== undefined && chars.type !== 'StringValue' && chars.type !== 'NullValue')
      throw new Error(`strip arg must be None or str, got ${chars.type}`);
    const set = chars?.type === 'StringValue' ? (chars.value as string) : null;
    return sameKind(s, pythonStrip(s.value as string, set, start, end));
  }

  /**
   * `v` as Python's `str` writes it ({@link pythonStr}); the items of lists and mappings written are steps of the
   * budget, four each as the items an evaluation makes (its characters are charged as those of the string made of it).
   */
  private str(v: RuntimeValue): string {
    const { text, items } = pythonStr(v, CHAT_TEMPLATE_LIMITS.stringChars);
    if (items > 0) this.charge(4 * items);
    return text;
  }

  /** A runtime string of `text`, made as a string literal (so charged and limited as any string). */
  private string(text: string, env: TemplateEnvironment): RuntimeValue {
    return this.value({ type: 'StringLiteral', value: text }, env);
  }

  /**
   * The expression `node` as a runtime string, as Python's `str` writes it: what a block writes of it (`{{ x }}`), and
   * what `|string` and `|trim` take.
   */
  private stringOf(node: TemplateNode, env: TemplateEnvironment): RuntimeValue {
    const v = this.value(node, env);
    return v.type === 'StringValue' ? v : this.string(this.str(v), env);
  }

  /** {@link evaluate} of `node` as a runtime value. */
  private value(node: TemplateNode | undefined, env: TemplateEnvironment): RuntimeValue {
    return this.evaluate(node as never, env as never) as unknown as RuntimeValue;
  }

  override evaluate(...args: Parameters<Interpreter['evaluate']>): ReturnType<Interpreter['evaluate']> {
    const node = args[0] as TemplateNode | undefined;
    if (node?.type === EVALUATED) return node.value as ReturnType<Interpreter['evaluate']>;
    if (node?.type === PRINTED)
      return this.stringOf(node.value as TemplateNode, args[1] as unknown as TemplateEnvironment) as never;
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
    const python = node ? this.python(node, args[1] as unknown as TemplateEnvironment) : undefined;
    let v = python ? (python as unknown as ReturnType<Interpreter['evaluate']>) : super.evaluate(...args);
    // Python's ints have no -0: the library's int arithmetic on JavaScript numbers made one (`0 * -1`, `-0`,
    // `'0'|int * -1`), which a float made of it kept (`(0 * -1) * 1.0` printed -0.0; jinja2: 0.0)
    if (v.type === 'IntegerValue' && Object.is(v.value, -0))
      v = sameKind(v as unknown as RuntimeValue, 0) as unknown as typeof v;
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
    if (
      (Array.isArray(value) || value instanceof Map) &&
      !this.inputs.has(v) &&
      this.measure(v as unknown as RuntimeValue).n > CHAT_TEMPLATE_LIMITS.stringChars &&
      !this.ofInputs(v as unknown as RuntimeValue)
    )
      throw new Error(
        `it made a ${Array.isArray(value) ? 'list' : 'mapping'} that prints as over ${CHAT_TEMPLATE_LIMITS.stringChars} characters`,
      );
    // A list a loop runs over is charged by its items (iterations); one looked up by name inside a loop,
    // `messages[loop.index0 - 1]`, is not an iteration: charged by its size, as made, except where only its length or
    // one item is taken (one step: `messages|length` in a loop over the messages was quadratic, and a Qwen3 chat of
    // 12 000 short messages was refused as a runaway loop). What scans it (`x in xs`) pays its size; so does a string.
    this.charge(
      1 +
        (node && this.loopLists.has(node)
          ? 40 * size
          : node && this.constantTime.has(node) && typeof value !== 'string'
            ? 0
            : typeof value === 'string'
              ? Math.ceil(size / 16)
              : // a list or mapping costs the library ~0.25 µs an item (a value object each): `range(100000)` in a
                // loop, charged a sixteenth, ran for a minute within the budget
                4 * size),
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

/** Month names as Python's `strftime` writes them in the C locale transformers runs in (never the user's locale). */
const MONTHS = [
  'January',
  'February',
  'March',
  'April',
  'May',
  'June',
  'July',
  'August',
  'September',
  'October',
  'November',
  'December',
];

/**
 * `strftime_now(format)` as transformers gives templates: the local time, `%Y %m %d %b %B %H %M %%`, month names in
 * English whatever the locale (`Intl` wrote "déc." under a French one, and "Sept" under en_GB).
 */
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
        return MONTHS[now.getMonth()]!.slice(0, 3);
      case '%B':
        return MONTHS[now.getMonth()]!;
      case '%H':
        return pad2(now.getHours());
      case '%M':
        return pad2(now.getMinutes());
      default:
        return '%';
    }
  });
}

/** What this module reads of the library's tokens. */
interface TemplateToken {
  value: string;
  type: string;
}

/** The name of the identifier {@link pythonLiterals} puts for a trailing comma (no template can name it). */
const TRAILING_COMMA = '\u0000caldera: trailing comma';

/** Words before a `(` that opens a parenthesized expression, not a call's arguments. */
const KEYWORDS = new Set(['and', 'or', 'not', 'in', 'is', 'if', 'else', 'elif']);

/**
 * The library's tokens of `1e-05` and `(1,)` made what its parser reads as Python's float and one-item tuple (jinja2
 * reads both; the library's lexer split `1e-05` into 1, `e`, `-`, 05, and its parser wanted an item after a tuple's
 * last comma): an exponent joined to its number, written with a point so it parses as a float (`1.e-05`), and a
 * trailing comma in parentheses (`(1,)`, `(a, b,)`) followed by a {@link TRAILING_COMMA} item that
 * {@link dropTrailingCommas} takes out of the parsed tuple (`()`, the empty tuple, is read as two such items). Only
 * token sequences the library refused are changed (a number followed by a name; `,)` and `()` outside a call), so a
 * template it parsed parses as before. Returns whether it put a trailing comma item. (jinja2 refuses `1 e5`, with a
 * space; tokens do not tell, so it reads as 1e5 here.)
 */
function pythonLiterals(tokens: TemplateToken[]): boolean {
  const token = (like: TemplateToken, value: string, type: string): TemplateToken =>
    Object.assign(Object.create(Object.getPrototypeOf(like) as object) as TemplateToken, { value, type });
  let marked = false;
  const grouping: boolean[] = []; // for each open `(`: whether it groups (else it opens a call's arguments)
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    const previous = tokens[i - 1];
    if (t.type === 'NumericLiteral' && previous?.type !== 'Dot' && /^[+-]?\d+(\.\d+)?$/.test(t.value)) {
      const [e, sign, digits] = [tokens[i + 1], tokens[i + 2], tokens[i + 3]];
      // `1e5` is lexed 1, `e5`; `1e-05` 1, `e`, `-`, 05
      const joined =
        e?.type === 'Identifier' && /^[eE]\d+$/.test(e.value)
          ? { exponent: e.value.slice(1), count: 2 }
          : e?.type === 'Identifier' &&
              /^[eE]$/.test(e.value) &&
              sign?.type === 'AdditiveBinaryOperator' &&
              (sign.value === '+' || sign.value === '-') &&
              digits?.type === 'NumericLiteral' &&
              /^\d+$/.test(digits.value)
            ? { exponent: sign.value + digits.value, count: 4 }
            : undefined;
      if (joined) {
        const point = t.value.includes('.') ? '' : '.';
        tokens.splice(i, joined.count, token(t, `${t.value}${point}e${joined.exponent}`, t.type));
      }
    } else if (t.type === 'OpenParen') {
      const call =
        previous !== undefined &&
        (['CloseParen', 'CloseSquareBracket', 'StringLiteral'].includes(previous.type) ||
          (previous.type === 'Identifier' && !KEYWORDS.has(previous.value)));
      grouping.push(!call);
    } else if (t.type === 'CloseParen') {
      // `(1,)`: (1, <mark>); `()`: (<mark>, <mark>)
      const marks =
        previous?.type === 'Comma'
          ? [token(t, TRAILING_COMMA, 'Identifier')]
          : previous?.type === 'OpenParen'
            ? [
                token(t, TRAILING_COMMA, 'Identifier'),
                token(t, ',', 'Comma'),
                token(t, TRAILING_COMMA, 'Identifier'),
              ]
            : [];
      if (grouping.pop() && marks.length > 0) {
        tokens.splice(i, 0, ...marks);
        marked = true;
        i += marks.length;
      }
    }
  }
  return marked;
}

/**
 * The {@link TRAILING_COMMA} items of a parsed program taken out (each ends a tuple, the parser's reading of
 * `(1, <mark>)`); a syntax error where one is elsewhere. The parser's nodes hold their parts in properties, arrays
 * and, for a mapping literal (`ObjectLiteral`, the one other container), a `Map` of key nodes to value nodes: its
 * keys and values are walked too (`{'k': (1,)}` printed `{'k': (1, Undefined)}`).
 */
function dropTrailingCommas(node: unknown): void {
  if (typeof node !== 'object' || node === null) return;
  const isMark = (n: unknown) =>
    (n as TemplateNode | undefined)?.type === 'Identifier' && (n as TemplateNode).value === TRAILING_COMMA;
  if (Array.isArray(node)) while (isMark(node.at(-1))) node.pop();
  const children = node instanceof Map ? [...node].flat() : Object.values(node);
  for (const child of children) {
    if (isMark(child)) throw new SyntaxError('Unexpected token: CloseParen');
    dropTrailingCommas(child);
  }
}

/**
 * Render a Jinja chat template with `context` (messages, special tokens, flags) as `@huggingface/jinja`'s `Template`
 * does (blocks' whitespace trimmed: `trim_blocks`, `lstrip_blocks`), the same globals (`raise_exception`, `range`,
 * `strftime_now`, `namespace`, the booleans and none), within {@link CHAT_TEMPLATE_LIMITS}. Throws a plain `Error`
 * for a template that does not parse, raises, or goes past a limit (the caller names the file).
 */
export function renderChatTemplate(template: string, context: Record<string, unknown>): string {
  const tokens = tokenize(template, { lstrip_blocks: true, trim_blocks: true });
  const marked = pythonLiterals(tokens as TemplateToken[]);
  const program = parse(tokens);
  if (marked) dropTrailingCommas(program);
  markPrinted((program as unknown as TemplateNode).body!);
  const env = new Environment();
  // jinja2's literals, which no name of the context replaces (jinja2 reads `none` as None, never as a variable)
  const literals = { false: false, true: true, none: null, False: false, True: true, None: null };
  const globals: Record<string, unknown> = {
    raise_exception: (message: unknown) => {
      throw new Error(String(message));
    },
    range: boundedRange,
    strftime_now: strftimeNow,
  };
  for (const [name, value] of Object.entries({ ...globals, ...context, ...literals })) env.set(name, value);
  if (!Object.hasOwn(context, 'range')) {
    // what `range()` makes prints as Python's range does, `range(0, 3)` (a list once through `|list`)
    const environment = env as unknown as TemplateEnvironment;
    const range = environment.lookupVariable('range');
    type Call = (args: RuntimeValue[], scope: unknown) => RuntimeValue;
    const made: Call = (args, scope) => {
      const list = (range.value as Call)(args, scope);
      const [a, b, step] = args.map((x) => x.value as number);
      const [start, stop] = b === undefined ? [0, a] : [a, b];
      RANGES.set(list, `range(${start}, ${stop}${step === undefined || step === 1 ? '' : `, ${step}`})`);
      return list;
    };
    environment.setVariable('range', sameKind(range, made));
  }
  const interpreter = new BudgetedInterpreter(env);
  for (const name of Object.keys(context))
    interpreter.markInput((env as unknown as TemplateEnvironment).lookupVariable(name));
  const result = interpreter.run(program);
  return String((result as { value?: unknown }).value);
}
