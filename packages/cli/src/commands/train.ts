import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CalderaError,
  isCalderaError,
  cast,
  leftAsideWarning,
  replaceDir,
  Rng,
  tempSuffix,
  tensor,
  writeSafetensors,
  type Tensor,
} from '@caldera/core';
import {
  initTrainParams,
  loadTokenizer,
  parseModelConfig,
  readJsonFile,
  settingsDiff,
  tokenDigest,
  Trainer,
  trainParamShapes,
  validationLoss,
  type TrainConfig,
} from '@caldera/runtime-node';
import {
  tokenWindow,
  flagNumber,
  flagString,
  NON_NEGATIVE_INT,
  POSITIVE,
  POSITIVE_INT,
  SEED,
  type Args,
} from '../args.js';
import { withOutputLock } from './out-lock.js';
import {
  checkOutDir,
  configJsonWithDtype,
  checkWorkDirs,
  checkTextTokenIds,
  checkTrainingText,
  compactTokenIds,
  copyModelSideFiles,
  defaultText,
  exists,
  leadingFileTokens,
  modelDirOf,
  modelSideFiles,
  readDocuments,
  tokenizeDocuments,
  makeDir,
  withStopSignals,
  type StopSignals,
  progressFor,
  TRAIN_FLAG_LABELS,
  TRAIN_OUTPUT,
  outPath,
} from './common.js';

export const trainHelp = `caldera train [template-dir] --out DIR [options]

Train a Llama-architecture model from scratch with Caldera's training engine (AdamW, warmup + cosine, clipping,
seeded data order). The architecture (config.json) and tokenizer (tokenizer.json) come from template-dir (default:
the embedded reference model, i.e. retrain it). Writes a Hugging Face directory (config.json, model.safetensors in
f16, tokenizer.json, generation_config.json, training-log.jsonl) atomically. Interrupt (Ctrl-C or SIGTERM) saves a resumable
state in <out>.partial; rerunning the same command continues from it with the same losses.

Options:
  --out DIR          output model directory (required)
  --data FILE        training text (default: reference train split)   --valid FILE   validation text (reference valid split)
  --steps N          optimizer steps (default 2000)   --lr LR   peak learning rate (default 3e-3)
  --batch N          sequences per step (default 8)
  --seq-len L        tokens per sequence, 2 … the model's max positions (default 128, or the max positions if fewer)
  --warmup N         warmup steps (default 50)   --eval-every N   validation every N steps (default 100)
  --valid-tokens N   validation tokens (default 8192)   --seed S   seed of init and data order (default 0)
  --checkpoint       activation checkpointing: recompute each block in the backward (less memory, ≈ 1 more
                     forward per step, same losses)
  --json             JSON lines on stdout (one per step and per validation)`;

/** How the validation settings a resumed run must keep are named in a refusal. */
const VALIDATION_LABELS = {
  valid: 'validation text (--valid tokens scored)',
  validTokens: '--valid-tokens',
  evalEvery: '--eval-every',
};

export async function trainCommand(a: Args): Promise<number> {
  const json = a.flags.has('json');
  const template = modelDirOf(a.positionals[0]);
  const out = outPath(flagString(a, 'out'));
  if (!out) throw new CalderaError('E_VALUE', 'caldera train needs --out DIR');
  // before any work: the model directory replaces only an empty directory or an earlier `caldera train` output
  // (its template may be that output: it is read before the new model replaces it, as npm run train:reference does)
  await checkOutDir(out, [template], TRAIN_OUTPUT);
  await checkWorkDirs(out, 'train');
  await modelSideFiles(template, true); // the side files the output copies: a FIFO among them, refused now, not after training
  // one writer of --out at a time; what a killed run left beside it (<out>.tmp-…, a model's size) is removed
  // Ctrl-C or SIGTERM from the lock on: while tokenizing, nothing is written yet (withStopSignals)
  const locked = async (stop: StopSignals): Promise<number> => {
    const steps = flagNumber(a, 'steps', 2000, POSITIVE_INT);
    const seqLenFlag = flagNumber(a, 'seq-len', undefined, { integer: true, min: 2 });
    const seed = flagNumber(a, 'seed', 0, SEED);
    const evalEvery = flagNumber(a, 'eval-every', 100, POSITIVE_INT);
    const batch = flagNumber(a, 'batch', 8, POSITIVE_INT);
    const lr = flagNumber(a, 'lr', 3e-3, POSITIVE);
    const warmup = flagNumber(a, 'warmup', 50, NON_NEGATIVE_INT);
    const validTokens = flagNumber(a, 'valid-tokens', 8192, POSITIVE_INT);
    const configPath = join(template, 'config.json');
    const hfConfig = (await readJsonFile(configPath)) as Record<string, unknown>;
    const mc = parseModelConfig(hfConfig, configPath);
    const cfg: TrainConfig = mc;
    const seqLen = tokenWindow('seq-len', seqLenFlag, 128, mc.maxPositions);
    const tokens = async (file: string) =>
      (
        await tokenizeDocuments(template, await readDocuments(file), mc.bosTokenId, { signal: stop.signal })
      ).flat();
    const dataFile = flagString(a, 'data') ?? defaultText('train');
    const dataIds = await tokens(dataFile);
    checkTextTokenIds(dataIds, mc.vocabSize, '--data', dataFile);
    const data = compactTokenIds(dataIds, mc.vocabSize);
    checkTrainingText(data, dataFile, seqLen);
    const validFile = flagString(a, 'valid') ?? defaultText('valid');
    // only the tokens validation scores (--valid-tokens; at least a window, so that a cap below it is refused as such),
    // not the whole file
    const tok = await loadTokenizer(template);
    const valid = await leadingFileTokens(tok, validFile, mc.bosTokenId, Math.max(validTokens, seqLen + 1));
    checkTextTokenIds(valid, mc.vocabSize, '--valid', validFile);
    // the first validation comes after --eval-every steps: a text too short for one window must fail now, not then
    if (Math.min(valid.length, validTokens) < seqLen + 1)
      throw new CalderaError(
        'E_VALUE',
        `validation needs at least --seq-len + 1 = ${seqLen + 1} tokens: ` +
          (valid.length < seqLen + 1
            ? `${validFile} has ${valid.length}`
            : `--valid-tokens is ${validTokens}`),
      );
    const partial = `${out}.partial`;
    const statePath = join(partial, 'train-state.bin');
    const logPath = join(partial, 'training-log.jsonl');
    await makeDir(partial);
    const trainerOptions = {
      seqLen,
      batch,
      lr,
      warmup,
      totalSteps: steps,
      seed,
      checkpoint: a.flags.has('checkpoint'),
    };
    // the validation settings, recorded with the state: a resumed run's log must not switch to another text midway
    // (of the tokens scored: --valid may be a pipe, read once already, and text past them changes nothing)
    const validation = { valid: tokenDigest(valid.slice(0, validTokens)), validTokens, evalEvery };
    // a saved state resumes only a run with the same options, model and data (else E_VALUE naming what differs)
    const trainer = (await exists(statePath))
      ? await Trainer.load(statePath, cfg, data, undefined, {
          expect: trainerOptions,
          labels: { ...TRAIN_FLAG_LABELS, warmup: '--warmup' },
          also: (info) => {
            const saved = (info as { validation?: Record<string, unknown> } | undefined)?.validation;
            // a state of an earlier version recorded none: resumed (its refusal would lose the run)
            return saved ? settingsDiff(saved, validation, { labels: VALIDATION_LABELS }) : [];
          },
        })
      : new Trainer(cfg, initTrainParams(cfg, new Rng(seed)), data, trainerOptions);
    // every save records the validation settings with the state (the resume check above reads them)
    const saveState = () => trainer.save(statePath, { info: { validation } });
    if (trainer.stepCount === 0) await writeFile(logPath, '');
    else await keepLoggedSteps(logPath, trainer.stepCount);
    const lines: string[] = [];
    const flushLog = async () => {
      if (lines.length) await writeFile(logPath, lines.splice(0).join(''), { flag: 'a' });
    };
    // Ctrl-C or SIGTERM: during training, the state before the step under way is saved; while the model is written,
    // what was written is removed and the finished run's state stays, so that a rerun writes it without training again
    const t0 = performance.now();
    try {
      const bar = progressFor('train', json);
      const first = trainer.stepCount;
      const tokensPerStep = trainer.options.seqLen * trainer.options.batch;
      try {
        while (trainer.stepCount < steps) {
          // a step lets the signal handlers run after each sequence, and an interrupted step is dropped whole
          const r = await trainer.stepAsync({ signal: stop.signal }).catch((e: unknown) => {
            if (stop.received() && isCalderaError(e, 'E_ABORTED')) return undefined;
            throw e;
          });
          if (!r) {
            await flushLog();
            await saveState();
            bar.done();
            console.error(
              `caldera train: interrupted at step ${trainer.stepCount}; rerun the same command to resume`,
            );
            return stop.exitCode();
          }
          const seconds = (performance.now() - t0) / 1000;
          const tps = ((trainer.stepCount - first) * tokensPerStep) / seconds;
          const rec: Record<string, unknown> = { event: 'step', ...r, tokensPerSecond: tps };
          if (r.step % evalEvery === 0 || r.step === steps)
            rec.valLoss = validationLoss(
              trainer.objective,
              trainer.params,
              valid,
              trainer.options.seqLen,
              validTokens,
            );
          lines.push(JSON.stringify(rec) + '\n');
          if (json) console.log(JSON.stringify(rec));
          bar.update(
            r.step,
            steps,
            ((steps - r.step) * tokensPerStep) / tps,
            `loss ${r.loss.toFixed(3)}${rec.valLoss ? ` val ${(rec.valLoss as number).toFixed(3)}` : ''} ${Math.round(tps)} tok/s`,
          );
          if (r.step % 25 === 0) {
            await flushLog();
            await saveState();
          }
        }
      } finally {
        bar.done();
      }
      await flushLog();
      if (first < trainer.stepCount) await saveState();

      // the model directory, written beside `out` and renamed into place
      const tmp = `${out}.tmp-${tempSuffix()}`;
      try {
        await makeDir(tmp);
        const shapes = trainParamShapes(cfg);
        const tensors: Record<string, Tensor> = {};
        for (const [name, p] of Object.entries(trainer.params))
          tensors[name] = cast(tensor('f32', shapes[name]!, p as Float32Array), 'f16');
        await writeSafetensors(join(tmp, 'model.safetensors'), tensors, {
          metadata: { format: 'pt' },
          signal: stop.signal,
        });
        await writeFile(join(tmp, 'config.json'), configJsonWithDtype(hfConfig, 'float16'));
        await copyModelSideFiles(template, tmp); // the template's tokenizer, chat template, generation settings
        await copyFile(logPath, join(tmp, 'training-log.jsonl'));
        // what is there now may only be replaced if it still is an earlier output (checked again: the run took a while)
        await checkOutDir(out, [], TRAIN_OUTPUT);
        stop.signal.throwIfAborted();
        const aside = await replaceDir(tmp, out);
        if (aside) console.error(`warning: ${leftAsideWarning(out, aside, 'model')}`);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        if (!stop.signal.aborted) throw e;
        console.error(`caldera train: interrupted while writing ${out}; rerun the same command to write it`);
        return stop.exitCode();
      }
    } finally {
      stop.dispose();
    }
    await rm(partial, { recursive: true, force: true });
    const summary = {
      event: 'done',
      out,
      steps: trainer.stepCount,
      seconds: (performance.now() - t0) / 1000,
    };
    if (json) console.log(JSON.stringify(summary));
    else console.log(`wrote ${out} after ${trainer.stepCount} steps`);
    return 0;
  };
  return withOutputLock(out, 'caldera train', () => withStopSignals('train', locked));
}

/**
 * Keep the lines of the training log `path` up to step `last`, the step of the state a run resumes from: a run killed
 * while it saved its state had logged the steps since the last save, which the resumed run logs again (85 lines for
 * 60 steps, steps 26–50 twice).
 */
async function keepLoggedSteps(path: string, last: number): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const kept = text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .filter((l) => {
      try {
        const step = (JSON.parse(l) as { step?: unknown }).step;
        return typeof step !== 'number' || step <= last;
      } catch {
        return false; // a line cut short by the kill
      }
    });
  await writeFile(path, kept.map((l) => `${l}\n`).join(''));
}
