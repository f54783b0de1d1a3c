/**
 * Tape autograd. Every differentiable op, when gradients are enabled and one
 * of its inputs requires a gradient, appends one node to the tape: its output
 * and a closure that, given the output's gradient, ADDS into its inputs'
 * gradients (through `gradOf`). backward() walks the tape in reverse — the
 * tape is already a topological order, since an op can only use tensors made
 * before it.
 *
 * Gradients accumulate: a leaf's `.grad` keeps growing over several backward()
 * calls until zeroGrad(); intermediate gradients are dropped after use.
 */
import { Tensor } from "../tensor/tensor.js";
import { shapeStr } from "../tensor/shape.js";
import { release } from "../tensor/pool.js";

interface Node {
  output: Tensor;
  /** Inputs that need gradients (a node is only recorded when there is one). */
  inputs: Tensor[];
  /** Adds this op's contribution into the gradients of its inputs; `g` is the output's gradient. */
  backward(g: Tensor): void;
}

let tape: Node[] = [];
let gradEnabled = true;
/** Tensors that are outputs of recorded nodes (non-leaves); their grads are freed after backward. */
const nonLeaf = new WeakSet<Tensor>();

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn with gradient recording off (inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** True when an op with these inputs must be recorded. */
export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t && t.requiresGrad) return true;
  return false;
}

/**
 * Records an op. `inputs` are all tensor inputs (those not requiring grads are
 * dropped); the output is marked as requiring a gradient.
 */
export function record(output: Tensor, inputs: (Tensor | null | undefined)[], backward: (g: Tensor) => void): void {
  const needed = inputs.filter((t): t is Tensor => !!t && t.requiresGrad);
  if (!gradEnabled || needed.length === 0) return;
  output.requiresGrad = true;
  nonLeaf.add(output);
  tape.push({ output, inputs: needed, backward });
}

/**
 * The gradient buffer of t, created (zeroed, same shape and dtype) on first
 * use. Backward rules add into it.
 */
export function gradOf(t: Tensor): Tensor {
  if (!t.grad) t.grad = Tensor.zeros(t.shape, t.dtype);
  return t.grad;
}

export interface BackwardOptions {
  /**
   * Return the buffers of the forward pass's intermediate tensors (the
   * outputs of recorded ops) to the buffer pool as soon as the backward no
   * longer needs them, so that the next step reuses them instead of
   * allocating (and page-faulting) hundreds of megabytes again. Only for
   * callers that read nothing computed in the forward pass after backward()
   * (a training step): those tensors' numbers are gone. `loss` itself,
   * parameters and other leaves, and small tensors (scalars) are never freed.
   */
  freeActivations?: boolean;
  /**
   * Called once for each leaf (a parameter) as soon as its gradient is
   * final for this pass: right after the earliest node on the tape that
   * reads it has run its backward, since no node left can add to it. Data
   * parallel training starts reducing a gradient across ranks here, while
   * backward goes on with the earlier layers (src/comm/buckets.ts).
   */
  onLeafReady?: (leaf: Tensor) => void;
}

/**
 * Backpropagates from `loss`. With no `grad`, loss must have one element and
 * its gradient is 1. Clears the tape: run the forward again before another backward.
 */
export function backward(loss: Tensor, grad?: Tensor, options: BackwardOptions = {}): void {
  if (!loss.requiresGrad) {
    throw new Error(`backward: ${loss} does not require a gradient (no parameter with requiresGrad was used, or it was computed under noGrad)`);
  }
  if (grad) {
    if (grad.size !== loss.size) throw new RangeError(`backward: gradient ${shapeStr(grad.shape)} does not match ${shapeStr(loss.shape)}`);
    gradOf(loss).data.set(grad.data);
  } else {
    if (loss.size !== 1) throw new RangeError(`backward: a loss of shape ${shapeStr(loss.shape)} needs an explicit gradient (or reduce it to one element)`);
    gradOf(loss).data[0] = 1;
  }
  const nodes = tape;
  tape = [];
  const uses = options.freeActivations ? activationUses(nodes, loss) : null;
  const leavesDoneAt = options.onLeafReady ? leafFinalNodes(nodes) : null;
  for (let i = nodes.length - 1; i >= 0; i--) {
    const node = nodes[i]!;
    const g = node.output.grad;
    if (g) {
      node.backward(g);
      // The output's gradient is complete now (all its consumers came later on
      // the tape) and was used: its buffer goes back to the pool.
      if (nonLeaf.has(node.output)) {
        node.output.grad = null;
        if (g.offset === 0) release(g.storage.data);
      }
    }
    // Every consumer of this output ran its backward already (they are later
    // on the tape); once the earliest node writing into this buffer (views
    // share it) has run too, nothing reads it any more.
    if (uses) {
      const buf = node.output.storage.data.buffer;
      const left = uses.get(buf);
      if (left !== undefined) {
        if (left > 1) uses.set(buf, left - 1);
        else {
          uses.delete(buf);
          release(node.output.storage.data);
        }
      }
    }
    const done = leavesDoneAt?.get(i);
    if (done) for (const leaf of done) options.onLeafReady!(leaf);
  }
}

/** For onLeafReady: node index → the leaves whose earliest reader on the tape is that node. */
function leafFinalNodes(nodes: Node[]): Map<number, Tensor[]> {
  const first = new Map<Tensor, number>();
  nodes.forEach((n, i) => {
    for (const t of n.inputs) if (!nonLeaf.has(t) && !first.has(t)) first.set(t, i);
  });
  const at = new Map<number, Tensor[]>();
  for (const [t, i] of first) {
    const list = at.get(i);
    if (list) list.push(t);
    else at.set(i, [t]);
  }
  return at;
}

/**
 * For freeActivations: how many nodes output into each buffer, leaving out
 * buffers that must outlive the pass (the loss, and any leaf an op read,
 * which a view op's output may share).
 */
function activationUses(nodes: Node[], loss: Tensor): Map<ArrayBufferLike, number> {
  const keep = new Set<ArrayBufferLike>([loss.storage.data.buffer]);
  for (const n of nodes) for (const t of n.inputs) if (!nonLeaf.has(t)) keep.add(t.storage.data.buffer);
  const uses = new Map<ArrayBufferLike, number>();
  for (const n of nodes) {
    const buf = n.output.storage.data.buffer;
    if (!keep.has(buf)) uses.set(buf, (uses.get(buf) ?? 0) + 1);
  }
  return uses;
}

/** Drops everything recorded (e.g. after a forward whose result is not backpropagated). */
export function clearTape(): void {
  tape = [];
}

/** Number of recorded nodes (for tests and memory diagnostics). */
export function tapeLength(): number {
  return tape.length;
}

/** Sets every tensor's gradient to zero (keeping the buffers), or drops them. */
export function zeroGrad(params: Iterable<Tensor>, drop = false): void {
  for (const p of params) {
    if (drop) p.grad = null;
    else if (p.grad) p.grad.data.fill(0);
  }
}
