/**
 * Where experts live: a placement maps each of E experts to one of D devices.
 *
 * The default is contiguous blocks (device d holds experts d·E/D … (d+1)·E/D − 1),
 * which is how MoGE's groups map onto devices and what routing.ts assumes.
 * A placement file is JSON, either `{"devices": D, "experts": [d_0, d_1, …]}`
 * (the device of each expert, in expert order) or `{"devices": D, "groups":
 * [[experts of device 0], [experts of device 1], …]}`; every expert must be
 * placed exactly once.
 */
import { z } from "zod";
import { SigmaError } from "../util/errors.js";
import { readJsonFile } from "../util/json.js";

export interface Placement {
  devices: number;
  /** Device of each expert [E]. */
  deviceOf: Int32Array;
}

const HINT_FORMAT = 'write {"devices": D, "experts": [device of expert 0, …]} or {"devices": D, "groups": [[experts of device 0], …]}';

export function contiguousPlacement(experts: number, devices: number): Placement {
  if (!Number.isInteger(devices) || devices < 1) throw new SigmaError(`devices = ${devices} is not a positive integer`, "pass --devices D with D ≥ 1");
  if (experts % devices !== 0) {
    throw new SigmaError(
      `devices = ${devices} does not divide the ${experts} experts, so contiguous placement cannot give each device the same number`,
      `pass --devices as a divisor of ${experts} (${divisors(experts).join(", ")}), or give a placement file with --placement`,
    );
  }
  const per = experts / devices;
  return { devices, deviceOf: Int32Array.from({ length: experts }, (_, e) => Math.floor(e / per)) };
}

const PlacementFile = z.union([
  z.object({ devices: z.number().int().min(1), experts: z.array(z.number().int()) }).strict(),
  z.object({ devices: z.number().int().min(1), groups: z.array(z.array(z.number().int())) }).strict(),
]);

/** Validates a parsed placement file against the expert count; `source` names it in errors. */
export function parsePlacement(json: unknown, experts: number, source = "placement"): Placement {
  const res = PlacementFile.safeParse(json);
  if (!res.success) {
    const where = res.error.issues[0]?.path.join(".") || "(top level)";
    throw new SigmaError(`${source}: field ${where} is invalid (${res.error.issues[0]?.message})`, HINT_FORMAT);
  }
  const { devices } = res.data;
  const deviceOf = new Int32Array(experts).fill(-1);
  if ("experts" in res.data) {
    const list = res.data.experts;
    if (list.length !== experts) throw new SigmaError(`${source}: "experts" lists ${list.length} devices but the model has ${experts} experts`, "give the device of every expert, in expert order");
    list.forEach((d, e) => {
      if (d < 0 || d >= devices) throw new SigmaError(`${source}: experts[${e}] = ${d} is not a device (allowed: 0..${devices - 1})`, "use a device number below \"devices\", or raise \"devices\"");
      deviceOf[e] = d;
    });
  } else {
    const groups = res.data.groups;
    if (groups.length !== devices) throw new SigmaError(`${source}: "groups" has ${groups.length} entries but "devices" is ${devices}`, "give one list of experts per device");
    groups.forEach((g, d) =>
      g.forEach((e, i) => {
        if (e < 0 || e >= experts) throw new SigmaError(`${source}: groups[${d}][${i}] = ${e} is not an expert (allowed: 0..${experts - 1})`, "list expert ids of this model only");
        if (deviceOf[e] !== -1) throw new SigmaError(`${source}: expert ${e} is placed twice (devices ${deviceOf[e]} and ${d})`, "place each expert on one device");
        deviceOf[e] = d;
      }),
    );
    const missing = [...deviceOf.keys()].filter((e) => deviceOf[e] === -1);
    if (missing.length) {
      throw new SigmaError(`${source}: experts ${missing.slice(0, 8).join(", ")}${missing.length > 8 ? ", …" : ""} are not placed on any device`, "every expert must appear in one group");
    }
  }
  return { devices, deviceOf };
}

export const readPlacement = (path: string, experts: number): Placement => parsePlacement(readJsonFile(path, "placement file", HINT_FORMAT), experts, path);

/** The placement to use: the file if given (it must agree with `devices` when both are set), else contiguous. */
export function choosePlacement(experts: number, devices: number | undefined, file: string | undefined): Placement {
  if (file === undefined) {
    if (devices === undefined) throw new SigmaError("the device count is missing", "pass --devices D (or a placement file with --placement)");
    return contiguousPlacement(experts, devices);
  }
  const p = readPlacement(file, experts);
  if (devices !== undefined && devices !== p.devices) {
    throw new SigmaError(`--devices ${devices} disagrees with "devices": ${p.devices} in ${file}`, "drop --devices or make them agree");
  }
  return p;
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}
