import { zerosLike, type Vec } from './types.js';

/** SwiGLU gate: `h = silu(gate) ⊙ up`, elementwise, with `silu(z) = z·σ(z)`. */
export function swigluForward(gate: Vec, up: Vec): Vec {
  const h = zerosLike(gate, gate.length);
  for (let i = 0; i < gate.length; i++) {
    const z = gate[i]!;
    h[i] = (z / (1 + Math.exp(-z))) * up[i]!;
  }
  return h;
}

/** Backward of {@link swigluForward}: `dup = dh·silu(g)`, `dgate = dh·up·σ(g)·(1 + g·(1 − σ(g)))`. */
export function swigluBackward(dh: Vec, gate: Vec, up: Vec): { dGate: Vec; dUp: Vec } {
  const dGate = zerosLike(gate, gate.length);
  const dUp = zerosLike(gate, gate.length);
  for (let i = 0; i < gate.length; i++) {
    const z = gate[i]!;
    const sg = 1 / (1 + Math.exp(-z));
    dUp[i] = dh[i]! * z * sg;
    dGate[i] = dh[i]! * up[i]! * sg * (1 + z * (1 - sg));
  }
  return { dGate, dUp };
}
