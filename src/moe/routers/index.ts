/**
 * The router registry: every router kind Sigma knows. The model config's
 * `experts.router` is the discriminated union of their schemas, and
 * `routerSpec` answers, for a parsed router config, everything router.ts
 * describes. A new router is a new file in this folder and one entry in KINDS.
 */
import { z } from "zod";
import { moge } from "./moge.js";
import type { RouterKind, RouterSpec } from "./router.js";
import { rre } from "./rre.js";
import { topk } from "./topk.js";

const KINDS = [rre, moge, topk] as const;

type SchemasOf<T extends readonly unknown[]> = { [I in keyof T]: T[I] extends RouterKind<infer S> ? S : never };
type Schemas = SchemasOf<typeof KINDS>;

/** The router section of a model config: one of the registered kinds, told apart by `kind`. */
export const RouterSchema = z.discriminatedUnion("kind", KINDS.map((r) => r.schema) as unknown as Schemas);

export type RouterConfig = z.infer<typeof RouterSchema>;

/** The registered kind names ("rre", …), in registry order. */
export const ROUTER_KINDS: readonly string[] = KINDS.map((r) => r.schema.shape.kind.value);

/** What the rest of Sigma needs to know about a parsed router config. */
export function routerSpec(config: RouterConfig): RouterSpec<RouterConfig> {
  const kind = KINDS.find((r) => r.schema.shape.kind.value === config.kind);
  if (!kind) throw new TypeError(`no router kind "${config.kind}" is registered (known: ${ROUTER_KINDS.join(", ")})`);
  return (kind.spec as unknown as (c: RouterConfig) => RouterSpec<RouterConfig>)(config);
}

/** The router config that routes by softmax over all experts then the k largest (renormalised or not): what formats such as GGUF and Hugging Face's MoE configs describe. */
export function softmaxTopkRouter(k: number, renormalize: boolean): RouterConfig {
  return RouterSchema.parse({ kind: topk.schema.shape.kind.value, k, renormalize });
}
