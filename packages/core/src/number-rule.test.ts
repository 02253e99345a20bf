import { describe, expect, it } from 'vitest';
import {
  checkNumberOptions,
  describeNumberRule,
  NON_NEGATIVE_INT,
  obeysNumberRule,
  POSITIVE,
  POSITIVE_INT,
  SEED,
} from './number-rule.js';

describe('number rules (shared by the CLI flags and the training options)', () => {
  it('words each rule as the messages quote it', () => {
    expect(describeNumberRule(POSITIVE_INT)).toBe('a positive integer');
    expect(describeNumberRule(NON_NEGATIVE_INT)).toBe('a non-negative integer');
    expect(describeNumberRule(POSITIVE)).toBe('a number > 0');
    expect(describeNumberRule(SEED)).toBe('an integer in [0, 4294967295]');
    expect(describeNumberRule({ above: 0, max: 1 })).toBe('a number in (0, 1]');
    expect(describeNumberRule({ min: 0 })).toBe('a number ≥ 0');
    expect(describeNumberRule({})).toBe('a number');
  });

  it('obeys: finite numbers within the bounds, integers safe ones; nothing that is no number', () => {
    expect(obeysNumberRule(1, POSITIVE_INT)).toBe(true);
    for (const bad of [0, 1.5, NaN, Infinity, 2 ** 53, '1', null])
      expect(obeysNumberRule(bad, POSITIVE_INT), String(bad)).toBe(false);
    expect(obeysNumberRule(1e-300, POSITIVE)).toBe(true);
    expect(obeysNumberRule(0, POSITIVE)).toBe(false);
  });

  it('checkNumberOptions: E_VALUE for the first given option that breaks its rule; undefined ones are skipped', () => {
    const rules = { steps: POSITIVE_INT, lr: POSITIVE };
    expect(() => checkNumberOptions('run', { steps: undefined, lr: 0.1 }, rules)).not.toThrow();
    expect(() => checkNumberOptions('run', { steps: 0, lr: -1 }, rules)).toThrow(
      'E_VALUE: run: steps must be a positive integer, got 0',
    );
    expect(() => checkNumberOptions('run', { lr: '1' }, rules)).toThrow(
      "E_VALUE: run: lr must be a number > 0, got '1'",
    );
  });
});
