import {
  CalderaError,
  checkTokenIds,
  danglingLinkError,
  isTempNameOf,
  isCalderaError,
  type CalderaErrorCode,
  MODEL_SIDE_FILES,
  parseSafetensorsIndex,
  readTextFile,
  notRegularFile,
  specialFileKind,
  stopTokenIdsOf,
  throwIfAborted,
  toCalderaError,
} from '@caldera/core';
import { sha256Hex } from '@caldera/calibrate';
import { createPool, type Pool } from '@caldera/linalg';
import { referenceModelDir, referenceTextPath } from '@caldera/reference-model';
import { progressBar } from '../args.js';
import { shellWord } from './shell-word.js';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import {
  access,
  constants,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  lstat,
  readFile,
  readlink,
  realpath,
  rmdir,
  stat,
} from 'node:fs/promises';
import {
  Llama2cTokenizer,
  loadLlama2c,
  loadModel,
  loadTokenizer,
  readJsonFile,
  type LlamaModel,
  type DecodePool,
  type LoadedModel,
  type LoadOptions,
  type ModelConfig,
  type TextTokenizer,
} from '@caldera/runtime-node';

export { shellWord };

/** Whether a file or directory exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** `path` made absolute with symbolic links resolved (as far as it exists), for comparing paths. */
async function canonicalPath(path: string): Promise<string> {
  const abs = resolve(path);
  try {
    return await realpath(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(await canonicalPath(parent), basename(abs));
  }
}

/** Whether `inner` is `outer` or lies inside it (both canonical). */
function within(inner: string, outer: string): boolean {
  const r = relative(outer, inner);
  return r === '' || (r !== '..' && !r.startsWith('..' + sep) && !isAbsolute(r));
}

/** Whether path `outer` `'is'` path `inner` or `'contains'` it (both canonical), else null. */
function holds(outer: string, inner: string): 'is' | 'contains' | null {
  return outer === inner ? 'is' : within(inner, outer) ? 'contains' : null;
}

/** The work directories a command keeps beside its `--out` while it runs, and removes when it is done. */
const WORK_SUFFIXES = ['.partial', '.work'] as const;

/** What each command keeps in its work directories beside `--out` (the names of its files and folders there). */
const WORK_ENTRIES: Record<
  'compress' | 'finetune' | 'train',
  Partial<Record<(typeof WORK_SUFFIXES)[number], RegExp>>
> = {
  compress: {
    '.partial': /^(run\.json|baseline\.json|block-\d+\.(json|safetensors))$/,
    '.work': /^(manifest\.json|hessian-plan\.json|hessian-chunks|hessians|results)$/,
  },
  finetune: { '.partial': /^finetune-state\.bin$/ },
  train: { '.partial': /^(train-state\.bin|training-log\.jsonl)$/ },
};

/**
 * Check, before any work starts, that the work directories `command` keeps beside `out` (`<out>.partial`, and for
 * compress `<out>.work`) hold only what it keeps there (an interrupted run's state, which it resumes, its atomic
 * writes' `.tmp-` files, and hidden files such as NFS's `.nfsXXXX`):
 * the run writes into them and removes them when it is done, so anything else there — a folder of one's own, or the
 * resumable state of another command (`caldera finetune`'s, then `caldera compress --out` the same path) — would be
 * lost. E_VALUE naming the directory and the first few foreign entries; a file in a work directory's place too.
 */
export async function checkWorkDirs(out: string, command: keyof typeof WORK_ENTRIES): Promise<void> {
  // only the work directories the command uses (finetune and train never touch <out>.work)
  for (const suffix of Object.keys(WORK_ENTRIES[command]) as (typeof WORK_SUFFIXES)[number][]) {
    const dir = `${out}${suffix}`;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'ENOENT') continue;
      if (code === 'ENOTDIR')
        throw new CalderaError(
          'E_VALUE',
          `${dir} is a file where caldera ${command} keeps its work directory; move it`,
        );
      throw toCalderaError(e, `reading ${dir}`);
    }
    const own = WORK_ENTRIES[command][suffix]!;
    // an atomic write's temporary file counts as the file it is for (core's isTempNameOf)
    const stem = (n: string) => {
      const at = n.lastIndexOf('.tmp-');
      return at > 0 && isTempNameOf(n, n.slice(0, at)) ? n.slice(0, at) : n;
    };
    // hidden files are the file system's or the desktop's (NFS's .nfsXXXX of a file replaced while open, .DS_Store)
    const foreign = names.filter((n) => !n.startsWith('.') && !own.test(stem(n)));
    if (foreign.length > 0)
      throw new CalderaError(
        'E_VALUE',
        `${dir} holds what caldera ${command} did not write there (${foreign.slice(0, 3).join(', ')}` +
          `${foreign.length > 3 ? ', …' : ''}); the run writes into it and then removes it: move it, or choose another --out`,
      );
  }
}

/**
 * Check, before any work starts, that writing a checkpoint to `out` loses nothing: it may be missing, an empty
 * directory or an earlier output of the same kind, which a rerun replaces: a directory whose `output.marker` is ours
 * (`output.isMarker`: caldera.json with format "caldera" for a Caldera checkpoint, the default) and whose every entry
 * is one such an output holds (`output.files`); a null marker takes no non-empty directory, for an output that has
 * nothing to tell it from others of its kind, such as a dense model. Refused with E_VALUE: a file, a non-empty
 * directory of another kind or with foreign entries (the first few named), and a path equal to or containing one of
 * `inputs` (the model or checkpoint the command reads), or whose work directories beside it (`<out>.partial`,
 * `<out>.work`) are or contain one — except, with `output.inPlace`, an input equal to `out` that is an earlier output
 * of the same kind (a command that reads all it needs of its input before replacing `out` atomically, such as
 * `caldera train` retraining its template). Then {@link checkOutWritable}: E_IO when the output cannot be created
 * there.
 */
export async function checkOutDir(
  out: string,
  inputs: readonly string[],
  output: OutputKind = CHECKPOINT_OUTPUT,
  flag = '--out',
): Promise<void> {
  const advice = `choose another ${flag} (or delete it yourself if it is not needed)`;
  await checkOutName(out, flag);
  const o = await canonicalPath(out);
  const work = await Promise.all(
    WORK_SUFFIXES.map(async (suffix) => [suffix, await canonicalPath(`${out}${suffix}`)]),
  );
  for (const input of inputs) {
    const i = await canonicalPath(input);
    // (a new directory inside the input destroys nothing: the input's own files are not touched)
    const how = holds(o, i);
    if (how === 'is' && output.inPlace) continue; // the marker check below still applies
    if (how)
      throw new CalderaError(
        'E_VALUE',
        `${flag} ${out} ${how} the input ${input}: writing the checkpoint there would destroy it; choose another ${flag}`,
      );
    // the work directories beside it, which the command removes when it is done (a model folder named m.partial,
    // compressed with --out m, was written into and then deleted)
    for (const [suffix, w] of work) {
      const near = holds(w, i);
      if (near)
        throw new CalderaError(
          'E_VALUE',
          `${flag} ${out}: its work directory ${out}${suffix} ${near} the input ${input}, which the run would write ` +
            `into and then remove; choose another ${flag}`,
        );
    }
  }
  let st;
  try {
    st = await stat(out);
  } catch (e) {
    const code = (e as { code?: string }).code;
    // (ENOTDIR: a file on the way, which checkOutWritable names)
    if (code === 'ENOENT' || code === 'ENOTDIR') return checkOutWritable(out, flag);
    throw new CalderaError('E_IO', `${flag} ${out}: cannot inspect it (${(e as Error).message})`, {
      cause: e,
    });
  }
  if (!st.isDirectory())
    throw new CalderaError(
      'E_VALUE',
      `${flag} ${out} is an existing file, not a directory: it would be replaced by the checkpoint; ${advice}`,
    );
  const entries = (
    await readdir(out).catch((e: unknown) => {
      throw ioError(e, out, 'list it');
    })
  ).sort();
  if (entries.length === 0) return checkOutWritable(out, flag);
  const list = (names: readonly string[]) =>
    names.slice(0, 3).join(', ') + (names.length > 3 ? `, … (${names.length} entries)` : '');
  let what: string;
  if (output.marker === null) what = `is a non-empty directory (it holds ${list(entries)})`;
  else if (!entries.includes(output.marker))
    what = `is a non-empty directory that is not ${output.kind} (no ${output.marker}; it holds ${list(entries)})`;
  else {
    // the marker alone proves nothing (a project of the user's may have a caldera.json): it must be ours, and every
    // entry one that such an output holds, before the directory may be replaced
    const text = await readTextFile(join(out, output.marker)).catch(() => null);
    const ours = text !== null && (output.isMarker?.(text) ?? true);
    // (a file of such an output being written atomically, `<file>.tmp-<random>`, is one of its own: a run killed
    // while writing report.json left one, and its rerun was refused)
    const own = (f: string) => output.files!.some((o) => f === o || isTempNameOf(f, o));
    const foreign = output.files ? entries.filter((f) => !own(f)) : [];
    if (ours && foreign.length === 0) return checkOutWritable(out, flag);
    what = !ours
      ? `is a non-empty directory that is not ${output.kind} (its ${output.marker} is not one of ours; it holds ${list(entries)})`
      : `is not only ${output.kind}: it also holds ${list(foreign)}`;
  }
  throw new CalderaError('E_VALUE', `${flag} ${out} ${what}: its files would be lost; ${advice}`);
}

/**
 * What of `out` itself would make the run fail only when it writes its result, hours later: said now. An empty path
 * (an unset shell variable: the work files became `.partial`, `.lock` in the working directory); a symbolic link (the
 * result replaced the link, not what it points to, or failed at a dangling one); a mount point, which the final rename
 * cannot move (EBUSY); an earlier output the user cannot write, whose files could not be removed after the swap; a
 * name too long for the names the run puts beside it ({@link OUT_SIDE_NAME_BYTES} more).
 */
async function checkOutName(out: string, flag: string): Promise<void> {
  if (out.trim() === '')
    throw new CalderaError(
      'E_VALUE',
      `${flag} is empty (an unset shell variable?): give the output directory`,
    );
  const longest = Buffer.byteLength(basename(resolve(out))) + OUT_SIDE_NAME_BYTES;
  if (longest > 255)
    throw new CalderaError(
      'E_VALUE',
      `${flag} ${out}: its name is too long: the run writes names ${OUT_SIDE_NAME_BYTES} bytes longer beside it, ` +
        `${longest} bytes, over the 255 a file name may have`,
    );
  const st = await lstat(out).catch(() => null);
  if (st === null) return;
  if (st.isSymbolicLink()) {
    const target = await readlink(out).catch(() => '?');
    throw new CalderaError(
      'E_VALUE',
      `${flag} ${out} is a symbolic link (to ${target}): the result would replace the link, not what it points to; ` +
        `give the directory itself (${flag} ${shellWord(await realpath(out).catch(() => target))})`,
    );
  }
  if (!st.isDirectory()) return; // a file: checkOutDir says so
  const parent = await stat(dirname(resolve(out))).catch(() => null);
  if (parent !== null && parent.dev !== st.dev)
    throw new CalderaError(
      'E_VALUE',
      `${flag} ${out} is a mount point: the result is moved into place by a rename, which a mount point refuses ` +
        `(EBUSY); give a directory inside it (${flag} ${shellWord(join(out, 'model'))})`,
    );
  const writable = await access(out, constants.W_OK).then(
    () => true,
    () => false,
  );
  if (!writable)
    throw new CalderaError(
      'E_IO',
      `${flag} ${out}: you cannot write it (EACCES): the earlier output there could not be removed once the new one ` +
        `replaces it; make it writable (chmod u+w) or choose another ${flag}`,
    );
}

/**
 * Bytes the longest name a run writes beside `<out>` adds to its name: the takeover of a stale lock,
 * `.lock.takeover-<16 hex>-<n>` (the earlier output set aside, `.old-<8 hex>.caldera-aside`, adds 27).
 */
const OUT_SIDE_NAME_BYTES = '.lock.takeover-0123456789abcdef-99'.length;

/**
 * Check that every input file named by a flag exists and is a readable file, before any work starts. `files`: flag
 * (e.g. `--eval`) and path.
 */
export async function checkInputFiles(files: readonly (readonly [string, string])[]): Promise<void> {
  for (const [flag, path] of files) {
    let st;
    try {
      st = await stat(path);
      await access(path, constants.R_OK);
    } catch (e) {
      const code = (e as { code?: string }).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(code);
      throw new CalderaError('E_IO', `${flag} ${path}: cannot read it (${why})`, { cause: e });
    }
    // (a FIFO was called a directory; reading one waits for a writer for ever)
    if (!st.isFile())
      throw new CalderaError('E_IO', `${flag} ${path} is ${specialFileKind(st)}, not a text file`);
  }
}

/**
 * The weight files of a model directory: the shards named by `model.safetensors.index.json` when it exists, else
 * `model.safetensors`, else every `*.safetensors` file.
 */
async function weightFiles(dir: string): Promise<string[]> {
  const index = join(dir, 'model.safetensors.index.json');
  if (await exists(index)) {
    const { weightMap } = parseSafetensorsIndex(await readTextFile(index, 'safetensors index'), index);
    return [...new Set(Object.values(weightMap))].map((f) => join(dir, f));
  }
  if (await exists(join(dir, 'model.safetensors'))) return [join(dir, 'model.safetensors')];
  return (await readdir(dir)).filter((f) => f.endsWith('.safetensors')).map((f) => join(dir, f));
}

/**
 * The side files of the model directory `dir` that it has (core's {@link MODEL_SIDE_FILES}: tokenizer, chat
 * template, generation config; with `config.json` first when `withConfig`), as a map from name to path, as
 * `writeCheckpointDir`'s `copyFiles` takes them. One that is not a regular file (a FIFO, a directory) is `E_IO`
 * naming it: copying a FIFO waits for a writer for ever.
 */
export async function modelSideFiles(dir: string, withConfig = false): Promise<Record<string, string>> {
  const copy: Record<string, string> = {};
  for (const f of withConfig ? ['config.json', ...MODEL_SIDE_FILES] : MODEL_SIDE_FILES) {
    const path = join(dir, f);
    const st = await stat(path).catch(() => null);
    if (!st) {
      // a link whose target is gone (a Hugging Face cache whose blob was removed) is no absent file: the checkpoint
      // went without its tokenizer settings or chat template without a word
      const dangling = await danglingLinkError(path);
      if (dangling) throw dangling;
      continue;
    }
    if (!st.isFile()) throw notRegularFile(path, specialFileKind(st), 'file to copy');
    copy[f] = path;
  }
  return copy;
}

/** Copy the side files `from` has ({@link modelSideFiles}) into the directory `to`. */
export async function copyModelSideFiles(from: string, to: string): Promise<void> {
  for (const [f, src] of Object.entries(await modelSideFiles(from))) await copyFile(src, join(to, f));
}

/** Total bytes of a model directory's weight files ({@link weightFiles}). */
export async function weightFileBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await weightFiles(dir)) {
    try {
      n += (await stat(f)).size;
    } catch (e) {
      throw new CalderaError('E_IO', `cannot read ${f}: ${(e as Error).message}`, { cause: e });
    }
  }
  return n;
}

/** The trainer settings a resumed `train` or `finetune` is refused on, named by their flags. */
export const TRAIN_FLAG_LABELS: Record<string, string> = {
  lr: '--lr',
  totalSteps: '--steps',
  seqLen: '--seq-len',
  batch: '--batch',
  seed: '--seed',
  data: '--data (its text)',
};

/**
 * An output path without trailing separators (the root stays `/`): `--out dir/`, as shells complete it, put
 * `<out>.partial`, `<out>.work` and `<out>.lock` inside the output, where the check of `--out` then refused them as
 * foreign files. One that ends in `.` or `..` (`--out .`) is made absolute, for the same reason.
 */
export function outPath(p: string): string;
export function outPath(p: string | undefined): string | undefined;
export function outPath(p: string | undefined): string | undefined {
  if (p === undefined) return p;
  const trimmed = p.replace(/(?<=.)[/\\]+$/, '');
  // '.' or '..' at the end names the folder through its own entry: `--out .` made '..partial' inside it, refused at
  // the end of the run as a foreign file (and again at every rerun); the absolute path puts them beside it
  const last = trimmed.split(/[/\\]/).pop();
  return last === '.' || last === '..' ? resolve(trimmed) : trimmed;
}

/** The model directory: the positional argument, or the embedded reference model. */
export function modelDirOf(positional: string | undefined): string {
  return positional ?? referenceModelDir();
}

/**
 * The held-out perplexity `caldera eval` scores by default: the first `HELD_OUT_TOKENS` tokens in windows of
 * `HELD_OUT_CONTEXT` (the model's max positions if fewer), as `caldera compress` (its first --eval-tokens, in the
 * same windows whatever --length) and `caldera finetune` report it, so that the same checkpoint gets the same number
 * from each.
 */
export const HELD_OUT_TOKENS = 8192;
export const HELD_OUT_CONTEXT = 256;

/** sha256 (hex) of a file's bytes; `E_IO` naming it when it cannot be read. */
export async function fileSha256(path: string): Promise<string> {
  const bytes = await readFile(path).catch((e: Error) => {
    throw new CalderaError('E_IO', `cannot read ${path}: ${e.message}`, { cause: e });
  });
  return sha256Hex(bytes);
}

/**
 * `bytes` decoded as UTF-8; `E_FORMAT` naming `path` and the first byte that is not UTF-8 (a binary file, or text in
 * another encoding such as Latin-1: decoded leniently, its bytes became U+FFFD and the model trained on those).
 */
export function utf8Text(bytes: Uint8Array, path: string): string {
  // a NUL byte is valid UTF-8 but no text: UTF-16 without a byte-order mark (every other byte 0), or a binary file
  const nul = bytes.indexOf(0);
  if (nul >= 0)
    throw new CalderaError(
      'E_FORMAT',
      `${path} is not UTF-8 text (byte ${nul}: 0x00, a NUL): give a text file in UTF-8 (UTF-16 text, or a binary file, ` +
        'would be read as text with NULs in it)',
    );
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (cause) {
    // only a TypeError is bad UTF-8: a text longer than V8's longest string (2²⁹ − 24 units, ~512 MiB of ASCII) is
    // another error, which was called "not UTF-8"
    if (!(cause instanceof TypeError))
      throw new CalderaError(
        'E_VALUE',
        `${path} (${bytes.length} bytes) is too large to read as one text here (${(cause as Error).message}): split it into smaller files`,
        { cause },
      );
    const at = firstNonUtf8Byte(bytes);
    throw new CalderaError(
      'E_FORMAT',
      `${path} is not UTF-8 text${at < bytes.length ? ` (byte ${at}: 0x${bytes[at]!.toString(16).padStart(2, '0')})` : ''}: ` +
        'give a text file in UTF-8 (a binary file, or text in another encoding such as Latin-1, would be read as U+FFFD)',
      { cause },
    );
  }
}

/**
 * Where the UTF-8 of `bytes` first breaks (bytes.length when it does not): a lead byte that starts nothing, a
 * continuation byte missing, or a second byte out of the lead's range (E0 A0–BF, ED 80–9F, F0 90–BF, F4 80–8F:
 * overlong forms and surrogates, which the decoder refuses too).
 */
function firstNonUtf8Byte(bytes: Uint8Array): number {
  let at = 0;
  while (at < bytes.length) {
    const c = bytes[at]!;
    const n =
      c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    let ok = n > 0 && at + n <= bytes.length;
    for (let k = 1; ok && k < n; k++) ok = (bytes[at + k]! & 0xc0) === 0x80;
    if (ok && n > 1) {
      const b = bytes[at + 1]!;
      const [lo, hi] =
        c === 0xe0
          ? [0xa0, 0xbf]
          : c === 0xed
            ? [0x80, 0x9f]
            : c === 0xf0
              ? [0x90, 0xbf]
              : c === 0xf4
                ? [0x80, 0x8f]
                : [0x80, 0xbf];
      ok = b >= lo && b <= hi;
    }
    if (!ok) return at;
    at += n;
  }
  return at;
}

/**
 * Documents of a text file: `.jsonl` (any case), one `{"text": …}` (or `"content"`) object per line; anything else
 * blocks separated by blank lines. Line endings may be LF, CRLF or CR (a CRLF file kept a "\r" at every line's end,
 * and a CR one was one document). Documents without any text (blank, or `"text": ""`) are dropped. A `.json` file is
 * `E_FORMAT` (it would be read as one document of JSON); a pipe is read to its end, and a directory, socket or
 * block device is `E_IO` naming what it is. With `whole`, the file is one document: its text (a `.jsonl`'s texts, empty
 * ones too, joined by blank lines), as the GPTQ / QuIP# / CALDERA papers score WikiText-2 (`"\n\n".join(test)`).
 */
export async function readDocuments(
  path: string,
  { whole = false }: { whole?: boolean } = {},
): Promise<string[]> {
  let bytes: Uint8Array;
  try {
    const st = await stat(path);
    // a pipe is read to its end (`--text /dev/stdin`, `<(zcat corpus.gz)`); a directory, socket or block device is
    // no text file
    if (!st.isFile() && !st.isFIFO() && !st.isCharacterDevice())
      throw notRegularFile(path, specialFileKind(st), 'text file');
    bytes = await readFile(path);
  } catch (e) {
    if (isCalderaError(e)) throw e;
    throw new CalderaError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (/\.json$/i.test(path))
    throw new CalderaError(
      'E_FORMAT',
      `${path} is a .json file: give a .txt (documents separated by blank lines) or a .jsonl (one {"text": "…"} per line)`,
    );
  const text = utf8Text(bytes, path).replace(/\r\n?/g, '\n');
  if (/\.jsonl$/i.test(path)) {
    // line numbers count every line of the file, blank ones included
    const texts = text
      .split('\n')
      .map((l, i) => [l, i] as const)
      .filter(([l]) => l.trim())
      .map(([l, i]) => {
        let o: unknown;
        try {
          o = JSON.parse(l);
        } catch {
          throw new CalderaError('E_FORMAT', `${path}:${i + 1} is not a JSON object`);
        }
        const r = o as { text?: unknown; content?: unknown } | null;
        const text = typeof r === 'object' && r !== null ? (r.text ?? r.content) : undefined;
        if (typeof text !== 'string')
          throw new CalderaError(
            'E_FORMAT',
            `${path}:${i + 1} has no "text" (or "content") string field; each line must be {"text": "…"}`,
          );
        return text;
      });
    if (whole) return oneDocument(texts.join('\n\n'));
    return texts.filter((t) => t.trim().length > 0); // as a .txt's blank documents: a file of {"text": ""} was BOS tokens only
  }
  if (whole) return oneDocument(text);
  return text.split(/\n\s*\n/).filter((d) => d.trim().length > 0);
}

/** `[text]`, or none when it is blank (as blank documents are dropped). */
const oneDocument = (text: string): string[] => (text.trim().length > 0 ? [text] : []);

/**
 * The first `max` token ids of `docs` (each after the BOS token when `bos` is not null), encoding only what they take:
 * the documents before them, and of a long document a prefix ({@link leadingIdsOf}); the same ids as encoding them all
 * and cutting (a held-out file of 9 MB scored on its first 8192 tokens was encoded whole: 18 s; one of a single 8 MB
 * document still was, 31 s).
 */
export function leadingTokens(
  encode: (text: string) => number[],
  docs: readonly string[],
  bos: number | null,
  max: number,
): number[] {
  const out: number[] = [];
  for (const d of docs) {
    if (out.length >= max) break;
    if (bos !== null) out.push(bos);
    for (const t of leadingIdsOf(encode, d, max - out.length)) out.push(t);
  }
  return out.slice(0, max);
}

/** Tokens past the ones needed that a prefix must also give before its ids are trusted (see {@link leadingIdsOf}). */
const PREFIX_MARGIN_TOKENS = 64;

/**
 * At least the first `need` ids of `encode(text)` (all of them when it has fewer): a text much longer than `need`
 * tokens is encoded by prefixes cut at a whitespace, from ~16 characters a token, each twice the last, until two
 * prefixes agree on their first `need` ids and the shorter gives {@link PREFIX_MARGIN_TOKENS} more (only the last
 * tokens of a prefix can differ from the whole text's: where it was cut), else whole.
 */
export function leadingIdsOf(encode: (text: string) => number[], text: string, need: number): number[] {
  const cut = (n: number) => {
    if (n >= text.length) return text.length;
    const space = text.lastIndexOf(' ', n);
    return space > n / 2 ? space : n;
  };
  let n = cut(16 * (need + PREFIX_MARGIN_TOKENS) + 256);
  if (n >= text.length) return encode(text);
  let ids = encode(text.slice(0, n));
  for (;;) {
    const next = cut(2 * n);
    const longer = encode(text.slice(0, next));
    if (next >= text.length) return longer;
    if (ids.length >= need + PREFIX_MARGIN_TOKENS && ids.slice(0, need).every((t, i) => t === longer[i]))
      return longer.slice(0, need);
    [n, ids] = [next, longer];
  }
}

/**
 * The first `max` token ids of the text file `file` ({@link readDocuments}, then {@link leadingTokens} with `tok`):
 * the tokens a command scores of a held-out or validation text, encoding only the documents they take.
 */
export async function leadingFileTokens(
  tok: { encode(text: string): number[] },
  file: string,
  bos: number | null,
  max: number,
): Promise<number[]> {
  return leadingTokens((d) => tok.encode(d), await readDocuments(file), bos, max);
}

/** The codes a CalderaError can have (an error that crossed a thread or Redis is matched against them). */
const CALDERA_ERROR_CODES: readonly CalderaErrorCode[] = [
  'E_SHAPE',
  'E_DTYPE',
  'E_FORMAT',
  'E_IO',
  'E_VALUE',
  'E_NOT_PD',
  'E_MISSING',
  'E_UNSUPPORTED',
  'E_ABORTED',
  'E_DEVICE',
];

/**
 * A CalderaError from the message of one that crossed a thread or Redis (it may start with its code, as a
 * CalderaError's message does): `code` when given, else that prefix, else `fallback`; the prefix is not repeated.
 */
export function errorFrom(
  message: string,
  fallback: CalderaErrorCode,
  code?: string,
  cause?: unknown,
): CalderaError {
  const m = /^(E_[A-Z_]+): ([\s\S]*)$/.exec(message);
  const c = (code ?? m?.[1]) as CalderaErrorCode | undefined;
  return new CalderaError(
    c && CALDERA_ERROR_CODES.includes(c) ? c : fallback,
    m ? m[2]! : message,
    cause === undefined ? undefined : { cause },
  );
}

/** Characters of text below which {@link tokenizeDocuments} stays on the calling thread (a thread costs ~0.1 s). */
export const PARALLEL_TOKENIZE_CHARS = 1 << 20;

/**
 * Token ids of documents (each document prefixed with the BOS token when the model has one). A text of at least
 * {@link PARALLEL_TOKENIZE_CHARS} characters is split into `threads` runs of consecutive documents of about equal
 * length, the first encoded on this thread and each other one on a thread of its own at the same time (the reference
 * model's 5.2 MB calibration text: 6.3 s on one thread); the ids are the same either way. `workerUrl` is the thread's
 * entry (default: the built `tokenize-thread.js` beside this module; when that file is absent, as when the sources run
 * unbuilt, everything is encoded here).
 */
export async function tokenizeDocuments(
  modelDir: string,
  docs: string[],
  bos: number | null,
  options: { threads?: number; workerUrl?: URL; signal?: AbortSignal } = {},
): Promise<number[][]> {
  const { signal } = options;
  throwIfAborted(signal, 'tokenizing');
  const tok = await loadTokenizer(modelDir);
  const withBos = (ids: number[]) => (bos === null ? ids : [bos, ...ids]);
  const workerUrl = options.workerUrl ?? new URL('./tokenize-thread.js', import.meta.url);
  const runs = splitByLength(docs, options.threads ?? 2, PARALLEL_TOKENIZE_CHARS);
  if (runs.length === 1 || !(await exists(fileURLToPath(workerUrl))))
    return encodeHere(tok, docs, withBos, signal);
  // the threads end when this call fails or is aborted (they went on encoding a large text after a Ctrl-C)
  const stop = new AbortController();
  const onAbort = () => stop.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const others = runs.slice(1).map((run) => encodeOnThread(workerUrl, modelDir, run, stop.signal));
    others.forEach((p) => p.catch(() => undefined)); // awaited below; a failure meanwhile is no unhandled rejection
    // this thread's run while the others work; then theirs, in order
    const mine = await encodeHere(tok, runs[0]!, withBos, signal);
    const theirs = await Promise.all(others);
    throwIfAborted(signal, 'tokenizing');
    return [...mine, ...theirs.flat().map((ids) => withBos(Array.from(ids)))];
  } finally {
    signal?.removeEventListener('abort', onAbort);
    stop.abort(); // ends any thread still running (none after success)
  }
}

/** Characters encoded on the calling thread between two looks at the event loop (about 0.1 s of work). */
const ENCODE_SLICE_CHARS = 1 << 16;

/**
 * `docs` encoded on this thread, a slice of documents at a time with the event loop let in between, so that Ctrl-C
 * (the `signal`) stops it within about a slice (a 5 MB text was encoded in one go: Ctrl-C took 8–23 s to act, and a
 * 31 MB one 150 s). A single document is encoded in one go.
 */
async function encodeHere(
  tok: { encode(text: string): number[] },
  docs: readonly string[],
  withBos: (ids: number[]) => number[],
  signal: AbortSignal | undefined,
): Promise<number[][]> {
  const out: number[][] = [];
  let chars = 0;
  for (const d of docs) {
    if (chars >= ENCODE_SLICE_CHARS) {
      chars = 0;
      await new Promise((r) => setImmediate(r));
      throwIfAborted(signal, 'tokenizing');
    }
    out.push(withBos(tok.encode(d)));
    chars += d.length;
  }
  return out;
}

/**
 * `docs` as at most `parts` runs of consecutive documents of about equal total length (one run when they hold fewer
 * than `minChars` characters).
 */
export function splitByLength(docs: readonly string[], parts: number, minChars: number): string[][] {
  const total = docs.reduce((n, d) => n + d.length, 0);
  const k = Math.max(1, Math.floor(parts));
  if (k === 1 || total < minChars) return [[...docs]];
  const runs: string[][] = [[]];
  let acc = 0;
  for (const d of docs) {
    // a new run once this one holds its share of the characters
    if (acc >= (total * runs.length) / k && runs.length < k) runs.push([]);
    runs[runs.length - 1]!.push(d);
    acc += d.length;
  }
  return runs;
}

/** The token ids of `docs` from a thread of its own (see tokenize-thread.ts). */
function encodeOnThread(
  url: URL,
  modelDir: string,
  docs: string[],
  stop: AbortSignal,
): Promise<Int32Array[]> {
  return new Promise((resolve, reject) => {
    const t = new Worker(url, { workerData: { modelDir, docs } });
    const onStop = () => {
      reject(new CalderaError('E_ABORTED', 'tokenizing was aborted', { cause: stop.reason }));
      void t.terminate();
    };
    stop.addEventListener('abort', onStop, { once: true });
    t.once('exit', () => stop.removeEventListener('abort', onStop));
    t.once('message', (ids: Int32Array[]) => {
      resolve(ids);
      void t.terminate();
    });
    t.once('error', (e) => {
      // a CalderaError thrown on the thread (an invalid tokenizer.json) keeps its code: the same error as on the main
      // thread, where it was E_IO "tokenizing on a thread failed: E_FORMAT: …"
      const code = (e as { code?: unknown }).code;
      reject(
        CALDERA_ERROR_CODES.includes(code as CalderaErrorCode)
          ? errorFrom(e.message, 'E_IO', code as CalderaErrorCode, e)
          : new CalderaError('E_IO', `tokenizing on a thread failed: ${e.message}`, { cause: e }),
      );
    });
    t.once('exit', (code) => {
      if (code !== 0) reject(new CalderaError('E_IO', `the tokenizing thread exited with code ${code}`));
    });
  });
}

/** Default calibration and evaluation texts for the reference model. */
export function defaultText(split: 'train' | 'valid' | 'test'): string {
  return referenceTextPath(split);
}

/** A linear-algebra pool of `threads` threads, or none for 1 (results do not depend on it). */
export function poolFor(threads: number): Pool | undefined {
  if (!Number.isInteger(threads) || threads < 1)
    throw new CalderaError('E_VALUE', `--threads must be a positive integer, got ${threads}`);
  if (threads > 1 && typeof (process as { getBuiltinModule?: unknown }).getBuiltinModule !== 'function')
    // the pools reach worker_threads through it (so that browser bundles never see a Node import): without it they
    // run on the calling thread alone, which went unsaid
    console.error(
      `caldera: --threads ${threads}: Node ${process.version} has no process.getBuiltinModule (Node 20.16+ in ` +
        'the 20 line, or 22.3+, has), so this runs on one thread',
    );
  return threads > 1 ? createPool({ threads }) : undefined;
}

/**
 * The error to throw for `e`, raised while `signal` may have fired: the signal's reason when it is a `CalderaError` (the
 * error a command's later phases throw for an interruption), so that Ctrl-C reads the same whichever phase it stops,
 * else `e` itself.
 */
export function interruptionOr(e: unknown, signal: AbortSignal | undefined): unknown {
  const reason: unknown = signal?.aborted ? signal.reason : undefined;
  return isCalderaError(reason) ? reason : e;
}

/**
 * runtime-node's `loadModel`, showing the blocks read so far on a progress bar on stderr when `showBar` (a large
 * model takes minutes to read). With `options.signal`, Ctrl-C stops the load: `E_ABORTED`, the signal's reason.
 */
export async function loadModelShowing(
  dir: string,
  options: LoadOptions,
  showBar: boolean,
): Promise<LoadedModel> {
  const bar = progressBar('load', showBar);
  try {
    return await loadModel(dir, {
      ...options,
      onProgress: ({ block, blocks }) => bar.update(block, blocks, undefined, `blocks of ${basename(dir)}`),
    });
  } catch (e) {
    throw interruptionOr(e, options.signal);
  } finally {
    bar.done();
  }
}

/** A model opened for generate/eval/inspect, from a Hugging Face / Caldera directory or a llama2.c `.bin`. */
export interface OpenedModel {
  model: LlamaModel;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  calderaMeta: LoadedModel['calderaMeta'];
  /** Bytes of the weight file(s). */
  fileBytes: number;
  format: 'huggingface' | 'caldera' | 'llama2.c';
}

/**
 * The end-of-sequence ids of a model directory: those of `config.json` and of `generation_config.json` when it exists
 * (core's {@link stopTokenIdsOf}).
 */
export async function stopTokenIds(dir: string, config: ModelConfig): Promise<number[]> {
  const file = join(dir, 'generation_config.json');
  return stopTokenIdsOf(config, await readJsonFile(file, { optional: true }), file);
}

/**
 * The warning (one line, for stderr) when every end-of-sequence id is past the vocabulary (a config whose
 * `eos_token_id` is not among the model's `vocab_size` tokens): no generated token can be one, so generation runs to
 * its token limit (it did so unsaid). Null when one can be generated, or when there are none.
 */
export function unreachableStopWarning(stopTokens: readonly number[], vocabSize: number): string | null {
  if (stopTokens.length === 0 || stopTokens.some((id) => id < vocabSize)) return null;
  return (
    `warning: the end-of-sequence ids (${stopTokens.join(', ')}) are not below the vocabulary size ${vocabSize}: ` +
    'no generated token can end the text, so it runs to --max-tokens (or --stop)'
  );
}

/**
 * Open `path`: a llama2.c checkpoint when it ends in `.bin` (tokenizer: `tokenizerPath` or `tokenizer.bin` beside
 * it), else a model directory (config.json, safetensors, tokenizer.json). `pool`: threads for the batch products;
 * `decodePool`: for the single-token products.
 */
export async function openModel(
  path: string,
  tokenizerPath?: string,
  pool?: Pool,
  decodePool?: DecodePool,
): Promise<OpenedModel> {
  const threads = { ...(pool ? { pool } : {}), ...(decodePool ? { decodePool } : {}) };
  if (path.endsWith('.bin')) {
    const { model, config } = await loadLlama2c(path, threads);
    const tokenizer = await Llama2cTokenizer.load(
      tokenizerPath ?? join(dirname(path), 'tokenizer.bin'),
      config.vocabSize,
    );
    return {
      model,
      config,
      tokenizer,
      calderaMeta: null,
      fileBytes: (await stat(path)).size,
      format: 'llama2.c',
    };
  }
  if (tokenizerPath !== undefined)
    throw new CalderaError(
      'E_VALUE',
      `--tokenizer applies to a llama2.c model (.bin); ${path} is a directory, whose tokenizer.json is used`,
    );
  const { model, config, calderaMeta } = await loadModel(path, threads);
  const tokenizer = await loadTokenizer(path);
  return {
    model,
    config,
    tokenizer,
    calderaMeta,
    fileBytes: await weightFileBytes(path),
    format: calderaMeta ? 'caldera' : 'huggingface',
  };
}

/** The files a Caldera checkpoint directory written by Caldera holds (compress, finetune: `writeCheckpointDir`). */
export const CHECKPOINT_FILES: readonly string[] = Object.freeze([
  'caldera.json',
  'model.safetensors',
  'config.json',
  'report.json',
  ...MODEL_SIDE_FILES,
]);

/** The files a `caldera train` output holds. */
export const TRAIN_OUTPUT_FILES: readonly string[] = Object.freeze([
  'training-log.jsonl',
  'model.safetensors',
  'config.json',
  ...MODEL_SIDE_FILES,
]);

/** Whether `text` is a `caldera.json` of ours: JSON with `format` "caldera" and a numeric `version`. */
export function isCalderaMetaText(text: string): boolean {
  try {
    const o = JSON.parse(text) as { format?: unknown; version?: unknown } | null;
    return typeof o === 'object' && o !== null && o.format === 'caldera' && typeof o.version === 'number';
  } catch {
    return false;
  }
}

/** Whether `text` is a `training-log.jsonl` of `caldera train`: every line a JSON object with an `event` string. */
export function isTrainingLogText(text: string): boolean {
  return text
    .split('\n')
    .filter((l) => l.trim())
    .every((l) => {
      try {
        const o = JSON.parse(l) as { event?: unknown } | null;
        return typeof o === 'object' && o !== null && typeof o.event === 'string';
      } catch {
        return false;
      }
    });
}

/** An earlier output of a command, which a rerun may replace: its marker file, how to recognise it, its files. */
export interface OutputKind {
  /** The file only this kind of output has (null: none, so only a missing or empty directory is taken). */
  marker: string | null;
  /** Named in errors, e.g. 'a Caldera checkpoint'. */
  kind: string;
  /** Whether the marker's text is really ours (default: any). */
  isMarker?: (text: string) => boolean;
  /** Every file name such an output holds; a directory with any other entry is not replaced. */
  files?: readonly string[];
  /** See {@link checkOutDir}. */
  inPlace?: boolean;
}

/** A Caldera checkpoint (compress, finetune). */
export const CHECKPOINT_OUTPUT: OutputKind = {
  marker: 'caldera.json',
  kind: 'a Caldera checkpoint',
  isMarker: isCalderaMetaText,
  files: CHECKPOINT_FILES,
};

/** A `caldera train` output. */
export const TRAIN_OUTPUT: OutputKind = {
  marker: 'training-log.jsonl',
  kind: "a 'caldera train' output",
  isMarker: isTrainingLogText,
  files: TRAIN_OUTPUT_FILES,
  inPlace: true,
};

/** `fs` error `e` as `E_IO` naming `path` and the errno code. */
export function ioError(e: unknown, path: string, what: string): CalderaError {
  if (isCalderaError(e)) return e;
  const code = (e as { code?: string }).code ?? (e as Error).message;
  const why =
    code === 'EACCES' || code === 'EPERM'
      ? 'permission denied'
      : code === 'EROFS'
        ? 'read-only file system'
        : code === 'ENOTDIR'
          ? 'a path component is not a directory'
          : code === 'ENOSPC'
            ? 'no space left on the device'
            : code;
  return new CalderaError('E_IO', `${path}: cannot ${what} (${why}${why === code ? '' : `, ${code}`})`, {
    cause: e,
  });
}

/** `mkdir(path, { recursive: true })` with fs errors as `E_IO` naming the path ({@link ioError}). */
export async function makeDir(path: string): Promise<void> {
  try {
    await mkdir(path, { recursive: true });
  } catch (e) {
    throw ioError(e, path, 'create the directory');
  }
}

/**
 * Check that `out` and the working directories beside it (`<out>.partial`, `<out>.tmp-…`) can be created: the
 * nearest existing ancestor of its parent must be a directory in which a directory can be made (tried with a
 * temporary one, removed at once: this also catches a read-only or virtual file system such as /proc, where a
 * recursive mkdir would never return). `E_IO` naming the path and the errno code otherwise. Creates nothing.
 */
export async function checkOutWritable(out: string, flag = '--out'): Promise<void> {
  let dir = dirname(resolve(out));
  for (;;) {
    let st;
    try {
      st = await stat(dir);
    } catch (e) {
      const code = (e as { code?: string }).code;
      const up = dirname(dir);
      if ((code === 'ENOENT' || code === 'ENOTDIR') && up !== dir) {
        dir = up;
        continue;
      }
      throw ioError(e, dir, `use it for ${flag} ${out}`);
    }
    if (!st.isDirectory())
      throw new CalderaError(
        'E_IO',
        `${flag} ${out}: cannot create it, ${dir} is a file, not a directory (ENOTDIR)`,
      );
    break;
  }
  let probe: string | undefined;
  try {
    probe = await mkdtemp(join(dir, '.caldera-probe-'));
  } catch (e) {
    throw ioError(e, dir, `create ${flag} ${out} in it`);
  } finally {
    if (probe !== undefined) await rmdir(probe).catch(() => undefined);
  }
}

/** The exit code of a command stopped by `signal`: 128 + its number (SIGINT 130, SIGTERM 143). */
export const SIGNAL_EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;
export type StopSignal = keyof typeof SIGNAL_EXIT_CODES;

/** What {@link onStopSignals} returns: the signal received (null until one is), its exit code, and the removal. */
export interface StopSignals {
  /** Aborted (reason `E_ABORTED: interrupted`) on the first SIGINT or SIGTERM. */
  readonly signal: AbortSignal;
  /** The signal received, or null. */
  received(): StopSignal | null;
  /** 130 for SIGINT, 143 for SIGTERM (130 when none was received). */
  exitCode(): number;
  /** Remove the handlers (in a `finally`). */
  dispose(): void;
}

/**
 * Handle SIGINT (Ctrl-C) and SIGTERM (kill, a container stop) the same way: the first of either aborts the returned
 * signal, so a command stops at its next check and cleans up instead of dying half-way through a write.
 */
export function onStopSignals(): StopSignals {
  const ctl = new AbortController();
  let got: StopSignal | null = null;
  const handler = (s: StopSignal) => () => {
    got ??= s;
    ctl.abort(new CalderaError('E_ABORTED', 'interrupted'));
  };
  const onInt = handler('SIGINT');
  const onTerm = handler('SIGTERM');
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  return {
    signal: ctl.signal,
    received: () => got,
    exitCode: () => SIGNAL_EXIT_CODES[got ?? 'SIGINT'],
    dispose() {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}

/**
 * `body` with Ctrl-C and SIGTERM caught from its start ({@link onStopSignals}), for a command that holds its output's
 * lock while it loads and tokenizes before it writes anything: an interruption there that `body` does not handle
 * itself ends it with `caldera <command>: interrupted before anything was written` and exit code 130 (143), the lock
 * released by the caller's `finally`. (Without a handler, Ctrl-C ended the process at once and left `<out>.lock`.)
 * `body` passes `stop.signal` to its long calls and handles later interruptions itself.
 */
export async function withStopSignals(
  command: string,
  body: (stop: StopSignals) => Promise<number>,
): Promise<number> {
  const stop = onStopSignals();
  try {
    return await body(stop);
  } catch (e) {
    if (!stop.signal.aborted) throw e;
    console.error(`caldera ${command}: interrupted before anything was written`);
    return stop.exitCode();
  } finally {
    stop.dispose();
  }
}

/**
 * Progress for a long command on stderr: the bar ({@link progressBar}) on a terminal; when stderr is redirected (a log
 * file, a CI job) and not `json`, plain lines instead — the first update, then at most one every `everyMs` (default
 * 10 s) or when the note's phase (its first word, when it has several) changes, and the last, so that a log shows
 * the run is alive; nothing with `json`.
 */
export function progressFor(label: string, json: boolean, everyMs = 10_000): ReturnType<typeof progressBar> {
  if (json) return progressBar(label, false);
  if (process.stderr.isTTY === true) return progressBar(label, true);
  let last = -Infinity;
  let phase: string | undefined;
  return {
    update(done: number, total: number, etaSeconds?: number, note = '') {
      const now = Date.now();
      // (a note of one word, such as export's tensor names, is no phase)
      const p = note.includes(' ') ? note.split(' ')[0] : '';
      if (now - last < everyMs && p === phase && done < total) return;
      last = now;
      phase = p;
      const eta = etaSeconds === undefined ? '' : `, ETA ${Math.max(0, Math.round(etaSeconds))} s`;
      process.stderr.write(`${label}: ${Math.floor(done)}/${total}${eta}${note ? ` ${note}` : ''}\n`);
    },
    done() {},
  };
}

/**
 * The text of a Hugging Face `config.json` whose weights are now stored as `torch` (`'float16'`, …): `torch_dtype` set,
 * and transformers 5's `dtype` too when the source has it (kept in agreement: a template's `'bfloat16'` stayed beside
 * f16 weights).
 */
export function configJsonWithDtype(config: Record<string, unknown>, torch: string): string {
  const out: Record<string, unknown> = { ...config, torch_dtype: torch };
  if ('dtype' in config) out.dtype = torch;
  return JSON.stringify(out, null, 2) + '\n';
}

/**
 * Token ids held compactly: 16 bits each when every id of a vocabulary of `vocabSize` fits (a training text is
 * tokens × 2 bytes), else 32 (Llama 3's 128 256 ids, Qwen2's 151 936: in 16 bits, id 70 476 became 4 940 — another
 * token of the vocabulary, trained on silently).
 */
export function compactTokenIds(ids: readonly number[], vocabSize: number): Uint16Array | Uint32Array {
  return vocabSize <= 0x10000 ? Uint16Array.from(ids) : Uint32Array.from(ids);
}

/**
 * `E_VALUE` naming the flag and file unless every token id of a text (`tokens`, of `file`, given as `flag`) is below
 * the model's `vocab_size`: a tokenizer with more tokens than the model (added tokens beyond it) failed only when
 * training reached the id, hours in for a real run, and again on resuming.
 */
export function checkTextTokenIds(
  tokens: ArrayLike<number>,
  vocabSize: number,
  flag: string,
  file: string,
): void {
  checkTokenIds(tokens, vocabSize, `${flag} ${file} (the model's vocab_size is ${vocabSize})`);
}

/**
 * `E_VALUE` naming the flag and file unless the training text `tokens` (of `file`, given as `--data`) holds at least
 * one sequence and its next-token target: `--seq-len + 2` tokens (the trainer's minimum), before any training work.
 */
export function checkTrainingText(tokens: ArrayLike<number>, file: string, seqLen: number): void {
  checkTextLength(
    tokens,
    '--data',
    file,
    seqLen + 2,
    `training needs at least --seq-len + 2 = ${seqLen + 2}`,
  );
}

/**
 * `E_VALUE` naming the option and its file when the text of `flag` (tokenized: `tokens`) has fewer than `min` tokens,
 * `need` saying how many it needs for what, rather than a library's message about an argument the user never gave.
 */
export function checkTextLength(
  tokens: ArrayLike<number>,
  flag: string,
  file: string,
  min: number,
  need: string,
): void {
  if (tokens.length < min)
    throw new CalderaError('E_VALUE', `${flag} ${file} has ${tokens.length} tokens; ${need}`);
}
