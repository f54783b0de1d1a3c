/**
 * Hardware profiles for the expert-parallel simulator: one device's compute
 * and memory rates, and its link into the all-to-all. All rates are what a
 * device *achieves*, not its datasheet peak; the presets below take peaks
 * and say so, so simulated times are lower bounds for those machines.
 *
 * A profile file is JSON with exactly these fields (unknown keys are errors):
 *   {"name": "...", "flops": 3.12e14, "memoryBandwidth": 2.0e12,
 *    "linkBandwidth": 3.0e11, "linkLatency": 3e-6}
 */
import { existsSync } from "node:fs";
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { parseWithSchema, readJsonFile } from "../util/json.js";

export const HardwareSchema = z
  .object({
    name: z.string().min(1).default("custom"),
    /** FLOP/s of one device (a multiply-add counts 2). */
    flops: z.number().positive(),
    /** Bytes/s between a device and its own memory (expert weights are read from it). */
    memoryBandwidth: z.number().positive(),
    /** Bytes/s a device sends (and, at the same time, receives) in the all-to-all. */
    linkBandwidth: z.number().positive(),
    /** Seconds of fixed cost per all-to-all (launch and first-byte latency). */
    linkLatency: z.number().min(0),
    note: z.string().optional(),
  })
  .strict();

export type Hardware = z.infer<typeof HardwareSchema>;

export const HARDWARE_PRESETS: Record<string, Hardware> = {
  // Illustrative, not measured: a 16-core AVX2/FMA server (16 cores × 3 GHz ×
  // 2 FMA units × 8 fp32 lanes × 2 ≈ 1.5 TFLOP/s peak, ~1 achieved), 8 channels
  // of DDR4 (~100 GB/s achieved), one 100 Gb/s Ethernet port per machine.
  cpu: { name: "cpu", flops: 1e12, memoryBandwidth: 1e11, linkBandwidth: 12.5e9, linkLatency: 10e-6, note: "illustrative 16-core AVX2 server on 100 GbE" },
  // NVIDIA A100 80GB SXM datasheet peaks: 312 TFLOP/s dense BF16, 2.039 TB/s
  // HBM2e, NVLink 3 at 600 GB/s both directions together (300 GB/s each way).
  // The 3 µs latency is illustrative (typical of an intra-node NCCL all-to-all).
  "a100-nvlink": { name: "a100-nvlink", flops: 312e12, memoryBandwidth: 2.039e12, linkBandwidth: 300e9, linkLatency: 3e-6, note: "A100 datasheet peaks, 8 GPUs on NVLink" },
  // The same GPUs, one per node, on HDR InfiniBand (200 Gb/s = 25 GB/s per GPU):
  // the case where dispatch bytes dominate. Latency illustrative.
  "a100-ib": { name: "a100-ib", flops: 312e12, memoryBandwidth: 2.039e12, linkBandwidth: 25e9, linkLatency: 5e-6, note: "A100 datasheet peaks, one GPU per node on HDR InfiniBand" },
  // Illustrative numbers of the order published for Ascend 910-class NPUs
  // (Pangu Pro MoE's hardware): ~300 TFLOP/s FP16, ~1.6 TB/s HBM, ~50 GB/s
  // per device between cards. Not a datasheet: edit a copy as JSON for real ones.
  "npu-cluster": { name: "npu-cluster", flops: 300e12, memoryBandwidth: 1.6e12, linkBandwidth: 50e9, linkLatency: 5e-6, note: "illustrative Ascend-910-class card" },
};

const HINT_FILE = `use a preset (${Object.keys(HARDWARE_PRESETS).join(", ")}) or a JSON file with fields name, flops, memoryBandwidth, linkBandwidth, linkLatency (src/balance/hardware.ts)`;

/** Validates a parsed profile; errors name the field. */
export const parseHardware = (json: unknown, source = "hardware profile"): Hardware => parseWithSchema(HardwareSchema, json, source, HINT_FILE);

/** A preset name, or the path of a JSON profile. */
export function resolveHardware(nameOrPath: string): Hardware {
  const preset = HARDWARE_PRESETS[nameOrPath];
  if (preset) return preset;
  if (!existsSync(nameOrPath)) throw new SigmaError(`unknown hardware "${nameOrPath}": not a preset and not a file`, HINT_FILE);
  return parseHardware(readJsonFile(nameOrPath, "hardware profile", HINT_FILE), nameOrPath);
}
