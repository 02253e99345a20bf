import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { referenceModelDir } from '@caldera/reference-model';
import { bin, runCli } from './test-cli.js';

/** `caldera chat args…` with `input` on its standard input. */
const chat = (args: string[], input: string) =>
  spawnSync(process.execPath, [bin, 'chat', ...args], { input, encoding: 'utf8', timeout: 120_000 });

// the reference model (greedy: its generation_config.json asks for no sampling) with a small chat template of its own
const dir = mkdtempSync(join(tmpdir(), 'caldera-chat-'));
cpSync(referenceModelDir(), dir, { recursive: true });
writeFileSync(
  join(dir, 'chat_template.jinja'),
  '{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}',
);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The turns `--json` printed, one object per line. */
const turnsOf = (stdout: string) =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('caldera chat', () => {
  it("answers each line as a turn of one conversation, reusing the cache; the first reply is generate --chat's; /reset starts over", () => {
    const r = chat(
      [dir, '--max-tokens', '8', '--system', 'Tell stories.', '--json'],
      'Once upon a time\n\nWhat next?\n/reset\nOnce upon a time\n/exit\nignored\n',
    );
    expect(r.status, r.stderr).toBe(0);
    const turns = turnsOf(r.stdout);
    // the empty line is no turn, and nothing is read after /exit
    expect(turns.map((t) => t.message)).toEqual(['Once upon a time', 'What next?', 'Once upon a time']);
    const g = runCli([
      'generate',
      dir,
      '--chat',
      '--system',
      'Tell stories.',
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '8',
      '--json',
    ]);
    expect(g.status, g.stderr).toBe(0);
    const generated = JSON.parse(g.stdout.trim().split('\n').pop()!) as {
      completion: string;
      promptTokens: number;
    };
    expect(turns[0]).toMatchObject({
      reply: generated.completion,
      promptTokens: generated.promptTokens,
      reusedTokens: 0,
      tokens: 8,
      interrupted: false,
    });
    // the second turn runs only what follows the first turn's prompt and reply
    expect(turns[1]!.reusedTokens as number).toBeGreaterThan(generated.promptTokens);
    expect(turns[1]!.promptTokens as number).toBeGreaterThan(turns[1]!.reusedTokens as number);
    // after /reset the same message gives the same reply from an empty cache
    expect(turns[2]).toMatchObject({ reply: turns[0]!.reply, reusedTokens: 0 });
  });

  it('prints the replies as text with a count after each; a model without a chat template is E_UNSUPPORTED', () => {
    const r = chat([dir, '--max-tokens', '4'], 'Hello\n/reset\n');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^.*\n\[4 tokens, [\d.]+ tokens\/s\]\n\n\[conversation reset\]\n$/s);
    const plain = chat([referenceModelDir()], 'Hello\n');
    expect(plain.status).toBe(1);
    expect(plain.stderr).toMatch(/E_UNSUPPORTED: chat needs a model with a chat template/);
    const bad = chat([dir, '--context', '1'], 'Hello\n');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--context/);
  });

  it('a message past the context is dropped with a word, and /reset lets the chat go on (it ended the chat)', () => {
    const r = chat(
      [dir, '--context', '30', '--max-tokens', '20', '--json'],
      'Hello there\nAnd more words please\n/reset\nHi\n',
    );
    expect(r.status, r.stderr).toBe(0);
    const turns = turnsOf(r.stdout);
    expect(turns.map((t) => t.message)).toEqual(['Hello there', 'And more words please', 'Hi']);
    // the first reply stops where the context is full (said as endedBy), the second message does not fit
    expect(turns[0]).toMatchObject({ endedBy: 'context', interrupted: false });
    expect(turns[1]).toMatchObject({
      tokens: 0,
      error: expect.stringMatching(/no room for a reply/) as unknown,
    });
    expect(turns[2]).toMatchObject({ reusedTokens: 0, interrupted: false });
    const text = chat([dir, '--context', '30', '--max-tokens', '20'], 'Hello there\nAnd more words please\n');
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/the context is full: \/reset starts over\]/);
    expect(text.stdout).toMatch(/no room for a reply .*; the turn is dropped: \/reset starts over\]/);
  });
});
