import { rm, rmdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CalderaError, type CalderaCheckpointMeta } from '@caldera/core';
import {
  loadModel,
  loadTokenizer,
  modelTeacher,
  perplexity,
  prepareLoraFinetune,
  prepareSignFinetune,
  runFinetune,
  writeFinetunedCheckpoint,
  type FinetuneResult,
} from '@caldera/runtime-node';
import {
  tokenWindow,
  flagNumber,
  flagString,
  givenFlags,
  POSITIVE,
  POSITIVE_INT,
  SEED,
  type Args,
} from '../args.js';
import { withOutputLock } from './out-lock.js';
import {
  checkOutDir,
  checkWorkDirs,
  checkTextLength,
  checkTextTokenIds,
  checkTrainingText,
  defaultText,
  exists,
  HELD_OUT_CONTEXT,
  HELD_OUT_TOKENS,
  loadModelShowing,
  makeDir,
  modelDirOf,
  modelSideFiles,
  withStopSignals,
  type StopSignals,
  progressFor,
  leadingFileTokens,
  readDocuments,
  tokenizeDocuments,
  TRAIN_FLAG_LABELS,
  outPath,
} from './common.js';

export const finetuneHelp = `caldera finetune [compressed-dir] [options]

LoRA fine-tuning of a CALDERA checkpoint (algorithm brief §7.1): the first k_ft components of L and R of every
compressed layer become trainable (f32, initialised from their dequantized values); Q, the rest of L and R, signs,
embeddings, the LM head, norms and biases stay frozen. Trains on a text with early stopping on a validation text,
keeps the best weights, and writes a new checkpoint (L_ft/R_ft in f32) that both runtimes load. Interrupt (Ctrl-C,
SIGTERM) saves a resumable state; rerunning the same command continues from it.
Without compressed-dir, fine-tunes ./caldera-out/model-caldera (what 'caldera compress' writes by default) with the
embedded reference model, which it was compressed from, as the teacher.

With --signs, trains the Hadamard sign vectors SU, SV of every layer end to end instead (the paper's RHT fine-tuning,
§7.2): everything else frozen, loss = cross-entropy against a teacher's next-token distribution.

Options:
  --out DIR          output checkpoint (default: <compressed-dir>-ft)
  --teacher DIR      distil from this (uncompressed) model's next-token distributions instead of the data's next
                     tokens (default: none for a given compressed-dir; the embedded reference model for the
                     default checkpoint and with --signs)
  --signs            train the sign vectors SU, SV instead of L_ft, R_ft
  --data FILE        training text (.txt documents separated by blank lines, or .jsonl; default: reference train split)
  --valid FILE       validation text for early stopping (default: reference valid split)
  --eval FILE        held-out text for perplexity before/after (default: reference test split)
  --ft-rank K        trainable rank per layer, clamped to the layer's rank (default 64; a fine-tuned checkpoint
                     keeps at least the rank it was trained with)
  --steps N          optimizer steps at most (default 200)   --lr LR   relative peak learning rate (default 1e-2)
  --batch N          sequences per step (default 4)
  --seq-len L        tokens per sequence, 2 … the model's max positions (default 128, or the max positions if fewer)
  --eval-every N     validate every N steps (default 20)   --patience N   validations without improvement (default 3)
  --valid-tokens N   validation tokens (default 4096)   --eval-tokens N   held-out tokens scored (default 8192)
  --seed S           data order seed (default 0)
  --checkpoint       activation checkpointing: recompute each block in the backward (less memory, ≈ 1 more
                     forward per step, same result)
  --half-base        keep the frozen dense base of the compressed layers in f16 (half its memory; the base is
                     rounded to f16, ≈ 1e-3 relative)
  --json             JSON lines on stdout instead of a progress bar and table`;

export async function finetuneCommand(a: Args): Promise<number> {
  const json = a.flags.has('json');
  // the options' values before any work (--seq-len against the model's max positions once its config is read)
  const ftRank = flagNumber(a, 'ft-rank', 64, POSITIVE_INT);
  // the signs train no factors: a trainable rank would be ignored (and recorded as if applied)
  if (a.flags.has('signs')) {
    const unused = givenFlags(a, ['ft-rank', 'half-base', 'checkpoint']);
    if (unused.length > 0)
      throw new CalderaError(
        'E_VALUE',
        `--signs trains the sign vectors SU, SV, not the factors: ${unused.join(', ')} would be ignored; give one of them`,
      );
  }
  const seqLenFlag = flagNumber(a, 'seq-len', undefined, { integer: true, min: 2 });
  const evalTokens = flagNumber(a, 'eval-tokens', HELD_OUT_TOKENS, { integer: true, min: 2 });
  const options = {
    steps: flagNumber(a, 'steps', 200, POSITIVE_INT),
    seqLen: 128, // clamped to (or checked against) the model's max positions once it is loaded
    batch: flagNumber(a, 'batch', 4, POSITIVE_INT),
    lr: flagNumber(a, 'lr', 1e-2, POSITIVE),
    evalEvery: flagNumber(a, 'eval-every', 20, POSITIVE_INT),
    patience: flagNumber(a, 'patience', 3, POSITIVE_INT),
    evalTokens: flagNumber(a, 'valid-tokens', 4096, POSITIVE_INT),
    seed: flagNumber(a, 'seed', 0, SEED),
  };
  const src = a.positionals[0] ?? join('caldera-out', 'model-caldera');
  if (!(await exists(join(src, 'caldera.json'))))
    throw new CalderaError(
      'E_IO',
      `${src} is not a CALDERA checkpoint (no caldera.json)${a.positionals[0] ? '' : "; run 'caldera compress' first"}`,
    );
  const out = outPath(flagString(a, 'out')) ?? `${outPath(src)}-ft`;
  // before any work: writing the result to --out loses nothing (never the input checkpoint or the teacher)
  const teacherFlag = flagString(a, 'teacher');
  await checkOutDir(out, teacherFlag === undefined ? [src] : [src, teacherFlag]);
  await checkWorkDirs(out, 'finetune');
  await modelSideFiles(src, true); // the side files the output copies: a FIFO among them, refused now, not after training
  // one writer of --out at a time; what a killed run left beside it (<out>.tmp-…, a model's size) is removed
  // Ctrl-C or SIGTERM from the lock on: while loading and tokenizing, nothing is written yet (withStopSignals)
  const locked = async (stop: StopSignals): Promise<number> => {
    const log = (o: Record<string, unknown>) => (json ? console.log(JSON.stringify(o)) : undefined);

    const showBar = !json && process.stderr.isTTY === true;
    const loaded = await loadModelShowing(src, { dtype: 'f32', signal: stop.signal }, showBar);
    const maxPos = loaded.config.maxPositions;
    options.seqLen = tokenWindow('seq-len', seqLenFlag, options.seqLen, maxPos);
    const bos = loaded.config.bosTokenId;
    const tokens = async (file: string) =>
      (await tokenizeDocuments(src, await readDocuments(file), bos, { signal: stop.signal })).flat();
    const dataFile = flagString(a, 'data') ?? defaultText('train');
    const vocab = loaded.config.vocabSize;
    const train = await tokens(dataFile);
    checkTextTokenIds(train, vocab, '--data', dataFile);
    checkTrainingText(train, dataFile, options.seqLen);
    const validFile = flagString(a, 'valid') ?? defaultText('valid');
    // the validation and held-out texts: only the tokens scored (--valid-tokens, --eval-tokens), not the whole files
    // (a large text was encoded whole, then cut)
    const tok = await loadTokenizer(src);
    // (at least a window: a --valid-tokens below it is refused as such, not as a text too short)
    const valid = await leadingFileTokens(
      tok,
      validFile,
      bos,
      Math.max(options.evalTokens, options.seqLen + 1),
    );
    checkTextTokenIds(valid, vocab, '--valid', validFile);
    checkTextLength(
      valid,
      '--valid',
      validFile,
      options.seqLen + 1,
      `validation needs at least --seq-len + 1 = ${options.seqLen + 1}`,
    );
    const evalFile = flagString(a, 'eval') ?? defaultText('test');
    const heldOut = await leadingFileTokens(tok, evalFile, bos, evalTokens);
    checkTextTokenIds(heldOut, vocab, '--eval', evalFile);
    checkTextLength(heldOut, '--eval', evalFile, 2, 'perplexity needs at least 2');
    const evalCtx = Math.min(HELD_OUT_CONTEXT, loaded.config.maxPositions);
    const signs = a.flags.has('signs');
    // the default checkpoint was compressed from the embedded reference model: distil from it (measured: plain
    // next-token training did not improve validation loss there, distillation did; docs/guide/finetune.md)
    const teacherDir =
      flagString(a, 'teacher') ?? (signs || !a.positionals[0] ? modelDirOf(undefined) : undefined);
    const teacherModel = teacherDir
      ? (await loadModelShowing(teacherDir, { signal: stop.signal }, showBar)).model
      : undefined;
    // before the baseline (an E_SHAPE from the loss after it, for the factors; the signs' setup checked it)
    if (teacherModel && teacherModel.config.vocabSize !== loaded.config.vocabSize)
      throw new CalderaError(
        'E_VALUE',
        `--teacher ${teacherDir}: its vocabulary of ${teacherModel.config.vocabSize} tokens differs from the model's ${loaded.config.vocabSize}`,
      );
    const before = await perplexity(loaded.model, heldOut, { context: evalCtx, signal: stop.signal });
    log({ event: 'baseline', ppl: before.ppl, tokens: before.tokens });

    const setup = signs
      ? prepareSignFinetune(loaded, teacherModel!)
      : prepareLoraFinetune(loaded, ftRank, teacherModel ? modelTeacher(teacherModel) : undefined, {
          checkpoint: a.flags.has('checkpoint'),
          halfBase: a.flags.has('half-base'),
        });
    // the rank trained: --ft-rank clamped to each layer's rank, and never below a rank an earlier run already trained
    // (its f32 factors cannot go back to the codes)
    const trainedRank = signs ? 0 : Math.max(0, ...setup.layers.map((l) => l.decomposition.ft?.rank ?? 0));
    const partial = `${out}.partial`;
    await makeDir(partial);
    // a run that stops before saving any state leaves no partial directory behind (one with state is never touched)
    // rmdir removes only an empty directory: one that holds state stays
    const dropIfEmpty = () => rmdir(partial).catch(() => undefined);
    // Ctrl-C or SIGTERM from here on: the state saved so far stays for a rerun to resume
    let result: FinetuneResult;
    let meta: CalderaCheckpointMeta | undefined;
    try {
      const bar = progressFor('finetune', json);
      try {
        result = await runFinetune(setup, train, valid, {
          ...options,
          statePath: join(partial, 'finetune-state.bin'),
          // a resumed run must have the same teacher and base precision (the rest is checked by runFinetune)
          runKey: {
            '--teacher': teacherDir ? resolve(teacherDir) : null,
            '--half-base': a.flags.has('half-base'),
          },
          settingLabels: {
            ...TRAIN_FLAG_LABELS,
            evalEvery: '--eval-every',
            patience: '--patience',
            evalTokens: '--valid-tokens',
            validation: '--valid (its text)',
            'starting factors': 'starting factors (the checkpoint, --ft-rank, --signs)',
          },
          signal: stop.signal,
          onProgress: (e) => {
            bar.update(
              e.step,
              e.steps,
              e.etaSeconds,
              `loss ${e.loss.toFixed(3)} val ${(e.valLoss ?? e.bestValLoss).toFixed(3)} ${Math.round(e.tokensPerSecond)} tok/s`,
            );
            log({ ...e });
          },
        });
      } catch (e) {
        await dropIfEmpty();
        if (stop.signal.aborted) {
          bar.done();
          console.error(
            (await exists(partial))
              ? `caldera finetune: interrupted; state saved in ${partial} — rerun the same command to resume`
              : 'caldera finetune: interrupted before any state was saved',
          );
          return stop.exitCode();
        }
        throw e;
      } finally {
        bar.done();
      }

      // what is at --out now is replaced only if it still is an earlier checkpoint (the run took a while)
      await checkOutDir(out, []);
      // Ctrl-C or SIGTERM while it is written: nothing is written, and the finished run's state stays for a rerun
      meta = await writeFinetunedCheckpoint(
        src,
        out,
        setup.layers,
        {
          trained: signs ? 'signs' : 'factors',
          ...(signs ? {} : { ftRank: trainedRank }),
          ...(teacherDir ? { teacher: teacherDir } : {}),
          ...options,
          steps: result.steps,
          bestStep: result.bestStep,
          initialValLoss: result.initialValLoss,
          bestValLoss: result.bestValLoss,
        },
        // checkOutDir above: nothing or an earlier checkpoint is there
        { signal: stop.signal, overwrite: true, onWarning: (m) => console.error(`warning: ${m}`) },
      ).catch((e: unknown) => {
        if (!stop.signal.aborted) throw e;
        return undefined;
      });
      if (!meta) {
        console.error(
          `caldera finetune: interrupted while writing ${out}; state saved in ${partial} — rerun the same command to write it`,
        );
        return stop.exitCode();
      }
    } finally {
      stop.dispose();
    }
    await rm(partial, { recursive: true, force: true });
    const tuned = await loadModel(out);
    const after = await perplexity(tuned.model, heldOut, { context: evalCtx });
    const report = {
      source: src,
      out,
      ...(signs ? {} : { ftRank: trainedRank }),
      layers: setup.layers.length,
      ...result,
      bitsPerWeight: meta.bitsPerWeight,
      perplexity: { before: before.ppl, after: after.ppl, tokens: after.tokens, context: evalCtx },
    };
    if (json) console.log(JSON.stringify({ event: 'done', ...report }));
    else {
      console.log(
        `fine-tuned ${signs ? 'the sign vectors of ' : ''}${setup.layers.length} layers${signs ? '' : ` (k_ft ≤ ${trainedRank})`}${teacherModel ? ' against the teacher' : ''} for ${result.steps} steps in ${result.seconds.toFixed(1)} s` +
          `${result.stoppedEarly ? ' (early stop)' : ''}; kept step ${result.bestStep}`,
      );
      console.log(
        `validation loss ${result.initialValLoss.toFixed(4)} → ${result.bestValLoss.toFixed(4)}; ` +
          `held-out perplexity ${before.ppl.toFixed(2)} → ${after.ppl.toFixed(2)} (${after.tokens} tokens, context ${evalCtx})`,
      );
      console.log(`wrote ${out} (${meta.bitsPerWeight.toFixed(3)} bits/weight, paper accounting)`);
    }
    return 0;
  };
  return withOutputLock(out, 'caldera finetune', () => withStopSignals('finetune', locked));
}
