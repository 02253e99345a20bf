import { describe, expect, it } from 'vitest';
import { Template } from '@huggingface/jinja';
import { renderChatTemplate } from './chat-template.js';

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
