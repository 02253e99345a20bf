import { describe, expect, it } from 'vitest';
import { Template } from '@huggingface/jinja';
import { pythonFloatRepr, pythonStrip, renderChatTemplate } from './chat-template.js';

// Qwen3's template in the form it ships (its reverse scan for the last user query, tool turns looking at their
// neighbours): it names `messages` inside its per-message loops
const QWEN3 = `{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- if loop.index0 > ns.last_query_index %}{{- '<think>\\n</think>\\n' }}{%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}`;

describe('renderChatTemplate', () => {
  it("renders a long conversation as @huggingface/jinja's Template does (the step budget refused 500 messages)", () => {
    const roles = ['user', 'assistant', 'tool', 'tool', 'assistant'];
    for (const n of [3, 500, 1000]) {
      const messages = Array.from({ length: n }, (_, i) => ({
        role: roles[i % roles.length]!,
        content: `message ${i} ` + 'lorem ipsum '.repeat(170), // about 2 KB
      }));
      const context = { messages, add_generation_prompt: true, bos_token: '', eos_token: '<|im_end|>' };
      const reference = new Template(QWEN3).render(context);
      expect(reference.length).toBeGreaterThan(n * 2000);
      expect(renderChatTemplate(QWEN3, context)).toBe(reference);
    }
  });

  it('a chat of 12 000 short messages renders: `messages|length` in a loop over them is no runaway (it was refused)', () => {
    const roles = ['user', 'assistant', 'tool', 'tool', 'assistant']; // tool turns look at their neighbours
    const messages = Array.from({ length: 12_000 }, (_, i) => ({
      role: roles[i % roles.length]!,
      content: `message ${i}`,
    }));
    const context = { messages, add_generation_prompt: true, bos_token: '', eos_token: '<|im_end|>' };
    expect(renderChatTemplate(QWEN3, context)).toBe(new Template(QWEN3).render(context));
  });

  it('what scans a list or string in a loop is still charged by its size: `in`, a comparison, a string', () => {
    const xs = Array.from({ length: 1 << 19 }, (_, i) => i);
    for (const body of [
      "{% if 'z' in xs %}{% endif %}",
      '{% if xs == ys %}{% endif %}',
      '{% if big %}{% endif %}',
      // a list made in the loop is charged as made, even where one item or its length is taken of it
      '{{ range(100000)[0] }}',
      '{{ range(100000)|length }}',
    ])
      expect(() =>
        renderChatTemplate(`{% for i in range(100000) %}${body}{% endfor %}`, {
          xs,
          ys: [...xs],
          big: 'x'.repeat(1 << 20),
        }),
      ).toThrow(/^it ran over 10000000 steps/);
  }, 30_000); // a template that scanned unbounded ran for minutes

  it('still stops a loop over a list named outside it, nested: the iterations are what is counted', () => {
    const t0 = performance.now();
    expect(() =>
      renderChatTemplate(
        '{% set xs = range(100000) %}{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}',
        {},
      ),
    ).toThrow(/^it ran over 10000000 steps/);
    expect(() =>
      renderChatTemplate(
        '{% for a in range(100000) if a > 5 %}{% for b in range(100000) %}{% endfor %}{% endfor %}',
        {},
      ),
    ).toThrow(/^it ran over 10000000 steps/);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });
});

// Expected strings below are jinja2 3.1's (Python), in transformers' environment (ImmutableSandboxedEnvironment,
// trim_blocks, lstrip_blocks): transformers renders chat templates with it, so a prompt that differs is another prompt.
describe('Python semantics where @huggingface/jinja differed from jinja2', () => {
  it("`==`, `!=`, `in` compare as Python does ('' is not false; equal lists and mappings are equal)", () => {
    const t =
      "{% if '' == false %}A{% endif %}{% if [1] == [1] %}B{% endif %}{% if {'a': 1} == {'a': 1} %}C{% endif %}" +
      "{% if true == 1 %}D{% endif %}{% if '1' == 1 %}E{% endif %}{% if 1 == 1.0 %}F{% endif %}" +
      "{% if none == none %}G{% endif %}{% if {'a': 1} in [{'a': 1}] %}H{% endif %}{% if 1 in [true] %}I{% endif %}" +
      "{% if 'a' in 'cat' %}J{% endif %}{% if 'k' in {'k': 1} %}K{% endif %}{% if [1, [2]] != [1, [2]] %}L{% endif %}" +
      "{% if '0' != false %}M{% endif %}";
    expect(renderChatTemplate(t, {})).toBe('BCDFGHIJKM'); // the library gave 'ADEGJKLM'
    // Llama 2's template: an empty system prompt still gets its <<SYS>> block
    const llama2 =
      "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}" +
      '{% else %}{% set system_message = false %}{% endif %}' +
      "{% if system_message != false %}<<SYS>>{{ system_message }}<</SYS>>{% endif %}{{ messages[-1]['content'] }}";
    const messages = [
      { role: 'system', content: '' },
      { role: 'user', content: 'Hi' },
    ];
    expect(renderChatTemplate(llama2, { messages })).toBe('<<SYS>><</SYS>>Hi');
  });

  it('strip, lstrip, rstrip and |trim take their characters, and strip what Python counts as whitespace', () => {
    const t =
      "{{ '\\n  x  \\n'.lstrip('\\n') }}|{{ 'xxhixx'.strip('x') }}|{{ '  a  '.rstrip() }}|{{ s|trim }}|" +
      "{{ 'abc'|trim('ac') }}|{{ s.strip() }}|{{ 'ab'.strip(none) }}";
    // U+FEFF is no whitespace to Python, U+001F is
    expect(renderChatTemplate(t, { s: '\ufeffHi\x1f' })).toBe('  x  \n|hi|  a|\ufeffHi|b|\ufeffHi|ab');
    expect(pythonStrip('\u0085\u2003 a\u00a0', null)).toBe('a');
    expect(pythonStrip('👋a👋', '👋')).toBe('a'); // by code point, not UTF-16 unit
  });

  it('selectattr/rejectattr test a missing attribute as undefined (Mistral Nemo checks role order so)', () => {
    const t =
      "{{ messages|selectattr('tool_calls', 'undefined')|list|length }}" +
      "{{ messages|rejectattr('tool_calls')|list|length }}" +
      "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}" +
      "{{ messages|selectattr('tool_calls', 'none')|list|length }}";
    const messages = [
      { role: 'user' },
      { role: 'assistant', tool_calls: [1] },
      { role: 'user', tool_calls: null },
    ];
    expect(renderChatTemplate(t, { messages })).toBe('1221'); // the library gave '0121'
  });

  it("strftime_now writes English month names, as Python's C locale (Intl followed the user's locale)", () => {
    const now = new Date();
    const want = ['short', 'long'].map((month) =>
      new Intl.DateTimeFormat('en-US', { month: month as 'short' | 'long' }).format(now),
    );
    const got = renderChatTemplate("{{ strftime_now('%b|%B') }}", {}).split('|');
    // (a render across midnight at a month's end would differ: not worth guarding)
    expect(got).toEqual(want);
  });

  it('a list built of one list held twice, doubled, is refused at once (printing it took minutes and gigabytes)', () => {
    const t0 = performance.now();
    for (const t of [
      '{% set ns = namespace(l=[0]) %}{% for i in range(26) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}',
      "{% set ns = namespace(d={'a': 'x'}) %}{% for i in range(26) %}{% set ns.d = {'a': ns.d, 'b': ns.d} %}{% endfor %}",
    ])
      expect(() => renderChatTemplate(t, {})).toThrow(
        /^it made a (list|mapping) that prints as over 4194304 characters$/,
      );
    // ... also when kept in a namespace, which a template changes (a size remembered while it was small let 200
    // attributes of a 2 M-character list through: 20 s and 1.4 GB)
    const attrs = Array.from({ length: 200 }, (_, i) => `{% set ns.a${i} = l %}`).join('');
    expect(() =>
      renderChatTemplate(
        // (at the top level: a set inside a loop does not outlive the loop)
        `{% set l = [0] %}${'{% set l = [l, l] %}'.repeat(17)}{% set ns = namespace() %}${attrs}` +
          '{{ ns|tojson|length }}',
        {},
      ),
    ).toThrow(/^it made a mapping that prints as over 4194304 characters$/);
    expect(performance.now() - t0).toBeLessThan(2000);
    // ... and when a list holding a namespace is doubled, the namespace grown afterwards (its size was remembered)
    expect(() =>
      renderChatTemplate(
        `{% set l = [0] %}${'{% set l = [l, l] %}'.repeat(17)}{% set ns = namespace() %}{% set h = [ns] %}` +
          `${'{% set h = [h, h] %}'.repeat(8)}{{ h|length }}{% set ns.a = l %}{{ h|tojson|length }}`,
        {},
      ),
    ).toThrow(/^it made a list that prints as over 4194304 characters$/);
    expect(performance.now() - t0).toBeLessThan(2000);
    // re-measuring a namespace is charged: 10 000 reads of a namespace of 20 000 entries stop within the budget (a
    // second of work, as every runaway template; uncharged, they ran for minutes)
    expect(() =>
      renderChatTemplate(
        '{% set ns = namespace(d) %}{% for i in range(10000) %}{% set ns.i = i %}{{ ns.k0 }}{% endfor %}',
        { d: Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`k${i}`, i])) },
      ),
    ).toThrow(/^it ran over 10000000 steps/);
    // the caller's conversation is not the template's making: 44 messages of 100 000 characters (4.4 M), of which the
    // template prints one letter each, render — also through a slice or a filter of the messages, which hold nothing
    // new
    const long = Array.from({ length: 44 }, () => ({ role: 'user', content: 'x'.repeat(100_000) }));
    for (const t of [
      '{% for m in messages %}{{ m.role[0] }}{% endfor %}',
      '{% set loop_messages = messages[1:] %}u{% for m in loop_messages %}{{ m.role[0] }}{% endfor %}',
      "{% for m in messages|selectattr('role', 'equalto', 'user') %}{{ m.role[0] }}{% endfor %}",
    ])
      expect(renderChatTemplate(t, { messages: long })).toBe('u'.repeat(44));
    // what a template builds of them still counts: the conversation twice over
    expect(() => renderChatTemplate('{{ (messages + messages)|length }}', { messages: long })).toThrow(
      /^it made a list that prints as over 4194304 characters$/,
    );
    // a long conversation is no such list: 4000 messages of 200 characters render (800 kB)
    const messages = Array.from({ length: 4000 }, (_, i) => ({
      role: 'user',
      content: `${i}`.padEnd(200, 'x'),
    }));
    expect(renderChatTemplate('{{ messages|tojson }}', { messages }).length).toBeGreaterThan(800_000);
  });

  // Each expected string below is what jinja2 3.1.6 printed for the same template and context in transformers'
  // environment (/tmp/tpl-work/ref.py's compile(), Python 3.11).
  it("prints values as Python's str: True, None, lists and mappings as repr (the library printed true, nothing, JSON)", () => {
    const c = [{ type: 'text', text: 'hi' }]; // content given as parts
    const t =
      "{{ true }}|{{ false }}|{{ none }}|{{ x }}|{{ 'a' ~ true ~ none ~ x }}|{{ true|string }}{{ none|string }}|" +
      "{{ c }}|{{ c|string }}|{{ 'p' ~ c }}|{{ [1, 'b', [true, none], c[0]]|join(',') }}|{{ c|tojson }}";
    expect(renderChatTemplate(t, { c })).toBe(
      "True|False|None||aTrueNone|TrueNone|[{'type': 'text', 'text': 'hi'}]|[{'type': 'text', 'text': 'hi'}]|" +
        "p[{'type': 'text', 'text': 'hi'}]|1,b,[True, None],{'type': 'text', 'text': 'hi'}|" +
        '[{"type": "text", "text": "hi"}]', // |tojson stays JSON (transformers' tojson)
    );
    const t2 =
      "{{ (1, 'a') }}|{% set ns = namespace(a=1) %}{{ ns }}|{{ {'k': none, 'l': [true]} }}|" +
      '{% macro m() %}{{ kwargs }}{% endmacro %}{{ m(a=1) }}|{% set b %}{{ false }}{% endset %}{{ b }}|' +
      '{% for v in [none, true] %}{{ v }}{% endfor %}|{% if true %}{{ none }}{% endif %}';
    expect(renderChatTemplate(t2, {})).toBe(
      "(1, 'a')|<Namespace {'a': 1}>|{'k': None, 'l': [True]}|{'a': 1}|False|NoneTrue|None",
    );
  });

  it('a namespace holding a list that holds it prints as Python, [...] where it recurs (measuring it overflowed the stack)', () => {
    expect(
      renderChatTemplate(
        '{% set ns = namespace(l=[]) %}{% set ns.l = [ns] %}{{ ns.l|length }}|{{ ns.l }}',
        {},
      ),
    ).toBe("1|[<Namespace {'l': [...]}>]");
  });

  it("writes strings in a list as Python's repr: its quotes, escapes, unprintable characters", () => {
    const s = ["it's", 'say "hi"', 'both \' "', 'nl\n\\ \t\r\x01\x7f\x80\xa0é\u200b\u2028😀'];
    expect(renderChatTemplate('{{ s }}|{{ [s[0]] }}', { s })).toBe(
      `["it's", 'say "hi"', 'both \\' "', 'nl\\n\\\\ \\t\\r\\x01\\x7f\\x80\\xa0é\\u200b\\u2028😀']|["it's"]`,
    );
  });

  it('writes numbers as Python: 1.0, 1e-05, 1e+16, every digit of an int', () => {
    const t =
      '{{ [1.0, 0.00001, 10000000000000000.0, 1000000000000000.0, 0.1, -0.0, 1/3, 2 ** 0.5] }}|{{ 3.0|string }}|' +
      "{{ 'a' ~ 1.0 }}|{{ 10 ** 21 }}|{{ 2 ** 100 }}|{{ 7 // 2 }}|{{ 7.0 // 2 }}|{{ x }}";
    expect(renderChatTemplate(t, { x: [2.5e-7, 0.1] })).toBe(
      '[1.0, 1e-05, 1e+16, 1000000000000000.0, 0.1, -0.0, 0.3333333333333333, 1.4142135623730951]|3.0|a1.0|' +
        '1000000000000000000000|1267650600228229401496703205376|3|3.0|[2.5e-07, 0.1]',
    );
    expect([1e-4, 1.234e-5, 1e21, -Infinity, NaN].map(pythonFloatRepr)).toEqual([
      '0.0001',
      '1.234e-05',
      '1e+21',
      '-inf',
      'nan',
    ]);
  });

  it("/, // and % of numbers as Python: the modulo takes the divisor's sign, a zero divisor is ZeroDivisionError", () => {
    // (jinja2's output; the library gave -1, 1, -1.5, -1.0, 0.0 for the first five, 10.0 for 1 // 0.1)
    const t =
      '{{ -7 % 3 }}|{{ 7 % -3 }}|{{ -7.5 % 2 }}|{{ -7 % 3.0 }}|{{ 4.0 % -2 }}|{{ 4 / 2 }}|{{ 7 / 2 }}|{{ -7 // 2 }}|' +
      '{{ 7.0 // 2 }}|{{ -7.5 // 2 }}|{{ 1 // 0.1 }}|{{ -0.0 // 1 }}|{% for i in range(4) %}{{ i % 2 }}{% endfor %}';
    expect(renderChatTemplate(t, {})).toBe('2|-2|0.5|2.0|-0.0|2.0|3.5|-4|3.0|-4.0|9.0|-0.0|0101');
    // Python's messages (3.11); the library printed inf, Infinity, NaN
    for (const [t, message] of [
      ['{{ 5 / 0 }}', 'division by zero'],
      ['{{ 5.0 / 0 }}', 'float division by zero'],
      ['{{ 5 // 0 }}', 'integer division or modulo by zero'],
      ['{{ 5 // 0.0 }}', 'float floor division by zero'],
      ['{{ 5 % 0 }}', 'integer modulo by zero'],
      ['{{ 5 % 0.0 }}', 'float modulo'],
    ] as const)
      expect(() => renderChatTemplate(t, {})).toThrow(new RegExp(`^${message}$`));
  });

  it("a string's % formats as Python's printf-style does: %s %r %d %f %x %e %g %c %%, flags, width, precision", () => {
    // (jinja2's output; the library refused a string's %: 'Unknown operator "%" between StringValue and …')
    const t =
      "{{ '%s' % 'x' }}|{{ '%d items' % 3 }}|{{ '%s and %s' % ('a', 'b') }}|{{ '%r' % 'a' }}|{{ '%s' % [1, none] }}|" +
      "{{ '%.2f' % 3.14159 }}|{{ '%5d|%-5s|%05.1f' % (42, 'ab', -2.25) }}|{{ '%i%%' % 50 }}|" +
      "{{ '%(a)s-%(b)03d' % {'a': 1, 'b': 2} }}|{{ '%x %#o %e %g %g' % (255, 8, 12345.678, 0.0001, 1234567.0) }}|" +
      "{{ '%.0f %.2f %d' % (2.5, 0.125, -3.7) }}|{{ '%c%c' % (65, 'z') }}";
    expect(renderChatTemplate(t, {})).toBe(
      "x|3 items|a and b|'a'|[1, None]|3.14|   42|ab   |-02.2|50%|1-002|ff 0o10 1.234568e+04 0.0001 1.23457e+06|" +
        '2 0.12 -3|Az', // (a tie rounds to even, as Python: JavaScript's toFixed gives 3 and 0.13)
    );
    for (const [t, message] of [
      ["{{ 'abc' % 5 }}", 'not all arguments converted during string formatting'],
      ["{{ '%s' % ('a', 'b') }}", 'not all arguments converted during string formatting'],
      ["{{ '%s %s' % 'x' }}", 'not enough arguments for format string'],
      ["{{ '%d' % 'x' }}", '%d format: a real number is required, not str'],
      ["{{ '%f' % none }}", 'must be real number, not NoneType'],
      ["{{ '%z' % 1 }}", "unsupported format character 'z' (0x7a) at index 1"],
      ["{{ '%' % 1 }}", 'incomplete format'],
    ] as const)
      expect(() => renderChatTemplate(t, {})).toThrow(new RegExp(`^${message.replace(/[()]/g, '\\$&')}$`));
    // held to the string limit before it is made
    expect(() => renderChatTemplate("{{ '%999999999d' % 1 }}", {})).toThrow(
      /^it made a string of over 4194304 characters/,
    );
  });

  it("a mapping's items are tuples, printed as Python's; its views and range() print as Python's objects", () => {
    // (jinja2's output; the library printed [['a', 1], ['b', 2]] for the first, refused `for a, b in [(1, 2)]`
    // ("Cannot unpack non-iterable type: TupleValue") and a tuple's |tojson ("Cannot convert to JSON: TupleValue"))
    const t =
      '{{ d.items()|list }}|{{ d.items() }}|{{ d.keys() }}|{{ d.values() }}|{{ range(3) }}|{{ range(1, 9, 2) }}|' +
      '{{ range(3)|list }}|{{ d|dictsort }}|{{ d|items|list }}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}|' +
      "{% for a, b in [(1, 2)] if a %}{{ a }}{{ b }}{% endfor %}|{{ (1, 2)|list }}|{{ {'t': (1, 2)}|tojson }}|" +
      "{{ ('a', 1) in d.items() }}|{{ (d|dictsort)[0] == ['a', 1] }}";
    expect(renderChatTemplate(t, { d: { a: 1, b: 2 } })).toBe(
      "[('a', 1), ('b', 2)]|dict_items([('a', 1), ('b', 2)])|dict_keys(['a', 'b'])|dict_values([1, 2])|" +
        "range(0, 3)|range(1, 9, 2)|[0, 1, 2]|[('a', 1), ('b', 2)]|[('a', 1), ('b', 2)]|a1b2|12|[1, 2]|" +
        '{"t": [1, 2]}|True|False',
    );
  });

  it("reads 1e-05 and (1,) as jinja2 does (the library could not parse them); tuples add as Python's", () => {
    // (jinja2's output; the library refused each: "Expected closing expression token", "Unexpected token: CloseParen")
    const t =
      '{{ 1e-05 }}|{{ [1e3, 2.5E-3, -1e-05, 1e+2] }}|{{ (1,) }}|{{ (1, 2,) }}|{{ () }}|' +
      "{{ '%s' % ('x',) }}|{{ '100%%' % () }}|{{ 1 in (1,) }}|{{ d.get('a',) }}|{% set t = (1,) %}{{ t + (2,) }}|" +
      '{{ 1e2 - 1 }}';
    expect(renderChatTemplate(t, { d: { a: 1 } })).toBe(
      '1e-05|[1000.0, 0.0025, -1e-05, 100.0]|(1,)|(1, 2)|()|x|100%|True|1|(1, 2)|99.0',
    );
    // Python's TypeErrors (the library made a list of a tuple and a list)
    expect(() => renderChatTemplate('{{ (1, 2) + [3] }}', {})).toThrow(
      /^can only concatenate tuple \(not "list"\) to tuple$/,
    );
    expect(() => renderChatTemplate('{{ [1] + (2,) }}', {})).toThrow(
      /^can only concatenate list \(not "tuple"\) to list$/,
    );
  });

  it('a tuple inside a mapping literal is the one jinja2 reads: (1,) and () are not padded with Undefined', () => {
    // (jinja2 3.1.6's output; a mapping literal's values kept the parse's trailing-comma marks: {'k': (1, Undefined)},
    // a length of 2, {"k": [1, null]}, and '%s' % (1,) was "not all arguments converted")
    const t =
      "{{ {'k': (1,)} }}|{{ {'k': ()} }}|{{ {'k': (1,)}|tojson }}|{{ {'k': (1,)}.k|length }}|" +
      "{{ {'k': '%s' % (1,)} }}|{{ [{'a': {'b': (1, 2,)}}] }}";
    expect(renderChatTemplate(t, {})).toBe(
      `{'k': (1,)}|{'k': ()}|{"k": [1]}|1|{'k': '1'}|[{'a': {'b': (1, 2)}}]`,
    );
  });

  it('an int is never -0 (Python has no such int): a float made of 5 % -5 or 0 * -1 is 0.0; floats keep -0.0', () => {
    // (jinja2 3.1.6's output; the first five were -0.0, -0.000000, -0.0, -0.0, -0.0)
    const t =
      "{{ (5 % -5) * 1.0 }}|{{ '%f' % (5 % -5) }}|{{ (0 // -1) * 1.0 }}|{{ (0 * -1) * 1.0 }}|{{ -0 * 1.0 }}|" +
      '{{ 0.0 % -5 }}|{{ -0.0 // 1 }}|{{ 0 / -5 }}|{{ 5.0 % -5 }}';
    expect(renderChatTemplate(t, {})).toBe('0.0|0.000000|0.0|0.0|0.0|-0.0|-0.0|-0.0|-0.0');
  });

  it("% takes its values as Python's does: a mapping key's value is the last, a negative * precision is 0", () => {
    // (jinja2 3.1.6's output; ours gave "1 {'a': 1}" for the first error, 'ab' for '%.*s' % (-1, 'abc') and a
    // RangeError of toFixed and toExponential for the next two)
    expect(
      renderChatTemplate(
        "{{ '%s %(a)s' % {'a': 1} }}|{{ '%.*s' % (-1, 'abc') }}|{{ '%.*f' % (-1, 2.5) }}|" +
          "{{ '%.*e' % (-2, 2.5) }}|{{ '%*.*s|' % (-4, -1, 'abc') }}",
        {},
      ),
    ).toBe("{'a': 1} 1||2|2e+00|    |");
    for (const t of [
      "{{ '%(a)s %s' % {'a': 1} }}",
      "{{ '%(a)*d' % {'a': 1} }}",
      "{{ '%(a)s %(b)s %s' % d }}",
    ])
      expect(() => renderChatTemplate(t, { d: { a: 1, b: 2 } })).toThrow(
        /^not enough arguments for format string$/,
      );
  });

  it('%e, %f and %g write every digit of the exact binary value, as Python; %g past 800 digits makes no zeros', () => {
    // (jinja2 3.1.6's output; past 100 decimals the digits were zeros, and '%.4194000g' made 4 M zeros to remove)
    expect(
      renderChatTemplate(
        "{{ '%.4194000g' % 0.1 }}|{{ '%.120f' % 1e-20 }}|{{ '%.3g' % 5e-324 }}|{{ '%.110e' % 0.1 }}",
        {},
      ),
    ).toBe(
      '0.1000000000000000055511151231257827021181583404541015625|' +
        `0.${'0'.repeat(20)}9999999999999999451532714542095716517295037027873924471077157760667830643797060474753379821777343750|` +
        `4.94e-324|1.00000000000000005551115123125782702118158340454101562500${'0'.repeat(54)}e-01`,
    );
    const tiny = renderChatTemplate("{{ '%.800g' % 5e-324 }}", {});
    expect(tiny).toMatch(
      /^4\.9406564584124654417656879286822137236505980261432476442558568250067550727020875186/,
    );
    expect(tiny).toMatch(/5229087538682506419718265533447265625e-324$/);
    expect(tiny.length).toBe(751 + 1 + 5);
    // (each took about 40 ms: 300 of them ran 12 s)
    expect(
      renderChatTemplate("{% for i in range(300) %}{{ '%.4194000g' % 0.1 }}{% endfor %}", {}).length,
    ).toBe(300 * 57);
  });

  it("% is charged what it goes through: a value's repr in full, though a precision keeps one character", () => {
    // a tuple is charged by its items when looked up, not by its strings' length: '%.1r' % t went through 2 M characters
    // each time for a few steps (a loop of it ran for minutes)
    const s = 'x'.repeat(2_000_000);
    expect(() =>
      renderChatTemplate("{% set t = (s,) %}{% for i in range(100) %}{{ '%.1r' % t }}{% endfor %}", { s }),
    ).toThrow(/^it ran over 10000000 steps/);
    // (jinja2 3.1.6's output) the part a precision keeps, by code points
    expect(
      renderChatTemplate("{% set t = (s,) %}{{ '%.1s|%.2r|%-3.1a|' % (t[0], t[0], t[0]) }}", {
        s: `é${'x'.repeat(10)}`,
      }),
    ).toBe("é|'é|'  |");
  });

  it("content given as parts: |trim writes it as Python does (Llama 3's template), + refuses it as Python", () => {
    const llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
    const messages = [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }] }];
    // the library refused it: "Unknown ArrayValue filter: trim"
    expect(renderChatTemplate(llama3, { messages, bos_token: '<s>', add_generation_prompt: true })).toBe(
      "<s><|start_header_id|>user<|end_header_id|>\n\n[{'type': 'text', 'text': 'What is this?'}]<|eot_id|>" +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    expect(renderChatTemplate('{{ c|trim }}|{{ true|trim }}', { c: messages[0]!.content })).toBe(
      "[{'type': 'text', 'text': 'What is this?'}]|True",
    );
    // Python's TypeErrors (the library wrote the list as JSON, the number as digits)
    const c = messages[0]!.content;
    for (const [t, message] of [
      ["{{ 'a' + c }}", 'can only concatenate str (not "list") to str'],
      ["{{ c + 'a' }}", 'can only concatenate list (not "str") to list'],
      ["{{ 'a' + 1 }}", 'can only concatenate str (not "int") to str'],
      ["{{ 1 + 'a' }}", "unsupported operand type(s) for +: 'int' and 'str'"],
    ] as const)
      expect(() => renderChatTemplate(t, { c })).toThrow(message);
    expect(renderChatTemplate("{{ 'a' + 'b' }}{{ [1] + [2] }}", {})).toBe('ab[1, 2]');
  });

  it('strip, lstrip, rstrip and |trim of two arguments are an error, as in Python (the library stripped whitespace)', () => {
    expect(() => renderChatTemplate("{{ 'abc'.strip('a', 'b') }}", {})).toThrow(
      /^strip expected at most 1 argument, got 2$/,
    );
    expect(() => renderChatTemplate("{{ 'abc'.rstrip('a', 'b') }}", {})).toThrow(
      /^rstrip expected at most 1 argument, got 2$/,
    );
    expect(() => renderChatTemplate("{{ 'abc'|trim('a', 'b') }}", {})).toThrow(
      /^trim expected at most 1 argument, got 2$/,
    );
  });

  it('printing a value as Python does is held to the same limits: its length, and a step per item written', () => {
    // 1.1 M control characters count 1.1 M in the list's size; written as `\x01` they are 4.4 M characters
    const s = '\x01'.repeat(1_100_000);
    expect(() => renderChatTemplate('{{ [s] }}', { s })).toThrow(
      /^it made a string of over 4194304 characters/,
    );
    // a list of lists printed in a loop: each item written is charged
    const t0 = performance.now();
    expect(() =>
      renderChatTemplate('{% for i in range(100000) %}{{ x }}{% endfor %}', {
        x: [Array.from({ length: 1000 }, () => Array.from({ length: 10 }, (_, i) => i))],
      }),
    ).toThrow(/^it ran over 10000000 steps/);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });
});
