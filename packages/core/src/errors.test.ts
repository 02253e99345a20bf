import { describe, expect, it } from 'vitest';
import {
  assertNotAbortSignal,
  assertFunction,
  assertNonEmptyString,
  assertObject,
  CalderaError,
  describeValue,
  isCalderaError,
  throwIfAborted,
} from './index.js';

describe('describeValue', () => {
  it('says what a value given in place of an argument is', () => {
    for (const [v, want] of [
      [null, 'null'],
      [undefined, 'undefined'],
      ['', 'an empty string'],
      ['x', 'a string'],
      [[], 'an array'],
      [[1, 2], 'an array'],
      [{}, 'an object'],
      [new Float32Array(2), 'an object'],
      [3, 'a number'],
      [Number.NaN, 'a number'],
      [true, 'a boolean'],
      [10n, 'a bigint'],
      [Symbol('s'), 'a symbol'],
      [() => 0, 'a function'],
    ] as const)
      expect(describeValue(v)).toBe(want);
  });
});

describe('argument checks', () => {
  const value = (f: () => void, message: RegExp) => {
    expect(f).toThrow(CalderaError);
    expect(f).toThrow(message);
    try {
      f();
    } catch (e) {
      expect(isCalderaError(e, 'E_VALUE')).toBe(true);
    }
  };

  it('assertObject turns a missing argument into E_VALUE naming the routine and argument', () => {
    for (const ok of [{}, [], new Float64Array(1), () => 0])
      expect(() => assertObject(ok, 'f', 'x')).not.toThrow();
    value(
      () => assertObject(null, 'e8pEncode', 'x', 'an array of numbers'),
      /^E_VALUE: e8pEncode: x must be an array of numbers, got null$/,
    );
    value(
      () => assertObject(undefined, 'f', 'options'),
      /^E_VALUE: f: options must be an object, got undefined$/,
    );
    value(() => assertObject(3, 'f', 'x'), /^E_VALUE: f: x must be an object, got a number$/);
    value(() => assertObject('', 'f', 'x'), /^E_VALUE: f: x must be an object, got an empty string$/);
  });

  it('assertNotAbortSignal refuses a signal where an options object goes, and passes anything else', () => {
    expect(() => assertNotAbortSignal(new AbortController().signal, 'Trainer.save')).toThrow(
      /^E_VALUE: Trainer.save: options must be an object such as \{ signal \}, got an AbortSignal$/,
    );
    for (const ok of [{}, { signal: new AbortController().signal }, null, undefined, 3])
      expect(() => assertNotAbortSignal(ok, 'f')).not.toThrow();
  });

  it('assertFunction turns a missing callback into E_VALUE naming the routine and argument', () => {
    expect(() => assertFunction(() => 0, 'f', 'get')).not.toThrow();
    for (const [bad, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      [{}, 'an object'],
      [[], 'an array'],
    ] as const)
      value(
        () => assertFunction(bad, 'fromCheckpointTensors', 'get'),
        new RegExp(`^E_VALUE: fromCheckpointTensors: get must be a function, got ${got}$`),
      );
  });

  it('assertNonEmptyString turns a missing or empty name into E_VALUE naming the routine and argument', () => {
    expect(() => assertNonEmptyString('/m', 'loadModel', 'the model directory')).not.toThrow();
    for (const [bad, got] of [
      [null, 'null'],
      [undefined, 'undefined'],
      ['', 'an empty string'],
      [{}, 'an object'],
      [7, 'a number'],
    ] as const)
      value(
        () => assertNonEmptyString(bad, 'loadModel', 'the model directory'),
        new RegExp(`^E_VALUE: loadModel: the model directory must be a non-empty string, got ${got}$`),
      );
    value(
      () => assertNonEmptyString(null, 'loadLlama2c', 'the checkpoint path', 'a path (a non-empty string)'),
      /^E_VALUE: loadLlama2c: the checkpoint path must be a path \(a non-empty string\), got null$/,
    );
  });
});

describe('throwIfAborted', () => {
  it('fires on an aborted signal, passes a live one or none, and names something that is not a signal', () => {
    const ac = new AbortController();
    expect(() => throwIfAborted(ac.signal, 'f')).not.toThrow();
    expect(() => throwIfAborted(undefined, 'f')).not.toThrow();
    expect(() => throwIfAborted(null as never, 'f')).not.toThrow();
    ac.abort();
    expect(() => throwIfAborted(ac.signal, 'f')).toThrow('E_ABORTED: f was aborted');
    // {} never fires: a mistake to report, not a signal to ignore
    for (const [bad, what] of [
      [{}, 'an object'],
      [true, 'a boolean'],
      ['stop', 'a string'],
    ] as const)
      expect(() => throwIfAborted(bad as never, 'f')).toThrow(
        `E_VALUE: f: signal must be an AbortSignal, got ${what}`,
      );
  });
});
