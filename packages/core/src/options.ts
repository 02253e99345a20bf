/**
 * `options` without its entries that are `undefined`, to spread over defaults: `{ ...DEFAULTS, ...definedOptions(o) }`
 * keeps a default where the caller passed the field as `undefined` (`{ lr: undefined }` from a form or a CLI without
 * the flag), which `{ ...DEFAULTS, ...o }` would overwrite with `undefined`. Null or undefined `options` give `{}`.
 */
export function definedOptions<T extends object>(options: T | null | undefined): Partial<T> {
  if (options == null) return {};
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
