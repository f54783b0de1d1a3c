/**
 * Module: a named tree of parameters. Parameters and children are registered
 * explicitly (no reflection), so the names in checkpoints are exactly the
 * names written here.
 */
import type { Precision } from "../backend/backend.js";
import { Tensor } from "../tensor/tensor.js";

/** Which optimizer group a parameter belongs to (PanGu-Σ's hybrid Adam treats experts apart). */
export type ParamGroup = "dense" | "expert";

export interface ParamInfo {
  tensor: Tensor;
  group: ParamGroup;
  /** Apply weight decay (matrices yes; biases, norms, embeddings' positions no). */
  decay: boolean;
}

export abstract class Module {
  private readonly params = new Map<string, ParamInfo>();
  private readonly children = new Map<string, Module>();
  private readonly buffers = new Map<string, Int32Array>();
  /** Training mode (dropout on); eval() turns it off. */
  training = true;
  /**
   * The input precision of this module's own matrix products (its weights ×
   * its inputs): "f32", or "bf16" for mixed-precision training. Set for a
   * whole tree with setPrecision; modules that must stay f32 (routers) do not
   * read it. Parameters, gradients and outputs are f32 either way.
   */
  precision: Precision = "f32";

  protected param(name: string, tensor: Tensor, opts: { group?: ParamGroup; decay?: boolean } = {}): Tensor {
    if (this.params.has(name) || this.children.has(name)) throw new Error(`duplicate parameter name "${name}"`);
    tensor.requiresGrad = true;
    tensor.name = name;
    this.params.set(name, { tensor, group: opts.group ?? "dense", decay: opts.decay ?? tensor.ndim >= 2 });
    return tensor;
  }

  /** Non-trainable integer state saved with the model (e.g. RRE routing tables). */
  protected buffer(name: string, data: Int32Array): Int32Array {
    if (this.buffers.has(name)) throw new Error(`duplicate buffer name "${name}"`);
    this.buffers.set(name, data);
    return data;
  }

  /** Every buffer under this module, by dotted name. */
  namedBuffers(prefix = ""): Map<string, Int32Array> {
    const out = new Map<string, Int32Array>();
    for (const [n, b] of this.buffers) out.set(prefix + n, b);
    for (const [n, c] of this.children) for (const [cn, b] of c.namedBuffers(`${prefix}${n}.`)) out.set(cn, b);
    return out;
  }

  protected child<M extends Module>(name: string, module: M): M {
    if (this.params.has(name) || this.children.has(name)) throw new Error(`duplicate child name "${name}"`);
    this.children.set(name, module);
    return module;
  }

  /** Every parameter under this module, by dotted name (e.g. "blocks.0.attn.q.weight"). */
  namedParameters(prefix = ""): Map<string, ParamInfo> {
    const out = new Map<string, ParamInfo>();
    for (const [n, p] of this.params) out.set(prefix + n, p);
    for (const [n, c] of this.children) for (const [cn, p] of c.namedParameters(`${prefix}${n}.`)) out.set(cn, p);
    return out;
  }

  parameters(): Tensor[] {
    return [...this.namedParameters().values()].map((p) => p.tensor);
  }

  /** Total number of parameter elements. */
  parameterCount(): number {
    let n = 0;
    for (const p of this.parameters()) n += p.size;
    return n;
  }

  train(on = true): this {
    this.training = on;
    for (const c of this.children.values()) c.train(on);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Sets the matrix-product precision of this module and everything under it. */
  setPrecision(p: Precision): this {
    this.precision = p;
    for (const c of this.children.values()) c.setPrecision(p);
    return this;
  }
}
