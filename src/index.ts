/**
 * sigma-moe as a library. Everything here is public and documented in the
 * README ("Use it as a library"); anything else under src/ is internal and may change.
 *
 *   import { openModel, train, evaluate, finetune, evalTasks, upcycle, extract, serve } from "sigma-moe";
 *
 * The `sigma` command line is a thin layer over these functions.
 */
export { openModel, Model, type GenerateOptions, type GeneratedPiece, type ParameterSummary, type ChatMessage, type OpenModelOptions, type SpeculativeStats } from "./api/model.js";
export { serve, type ServeOptions, type SigmaServer, type ServerStats } from "./api/serve.js";
export { quantize, type QuantizeOptions, type QuantizeResult } from "./api/quantize.js";
export { exportGguf, importGguf, type GgufExportResult, type GgufImportResult } from "./api/gguf.js";
export { importHf, exportHf, type HfImportResult, type HfExportResult } from "./api/hf.js";
export { HF_ARCHITECTURES, type HfImportOptions } from "./models/import/hf.js";
export { WEIGHT_FORMATS, type WeightFormat } from "./backend/quant.js";
export { KV_FORMATS, type KVFormat } from "./nn/attention.js";
export { train, type TrainOptions, type TrainResult, type TrainEvent } from "./api/train.js";
export { evaluate, type EvaluateOptions, type EvaluateResult } from "./api/evaluate.js";
export { finetune, type FinetuneOptions, type FinetuneResult, type FinetuneEvent } from "./api/finetune.js";
export { evalTasks, type EvalTasksOptions, type EvalTasksResult } from "./api/eval-tasks.js";
export type { TaskResult, TaskKind, Metric as TaskMetric } from "./train/tasks.js";
export { upcycle, type UpcycleOptions, type UpcycleResult } from "./api/upcycle.js";
export { extract, type ExtractOptions, type ExtractResult } from "./api/extract.js";
export { addDomain, type AddDomainOptions, type AddDomainResult } from "./api/domain.js";
export { prepareData, type PrepareOptions } from "./data/prepare.js";
export { Tokenizer, type TextTokenizer, type TextStreamDecoder } from "./tokenizer/codec.js";
export { HfTokenizer, type HfTokenizerOptions } from "./tokenizer/hf.js";
export { fromHfJson as parseTokenizer, loadTokenizer, parseTokenizerJson, loadAnyTokenizer, toHfJson as tokenizerToJson } from "./tokenizer/hfjson.js";
export { TrainConfigSchema, parseTrainConfig, type TrainConfig, type TrainConfigInput } from "./train/config.js";
export { ModelConfigSchema, parseModelConfig, type ModelConfig, type ModelConfigInput } from "./models/config.js";
export { PRESETS, presetConfig, modelMemory, type ModelMemory, type PresetOptions } from "./models/presets.js";
export { RouterSchema, ROUTER_KINDS, type RouterConfig } from "./moe/routers/index.js";
export type { DomainEval } from "./train/evaluate.js";
export { SigmaError } from "./util/errors.js";
export { tune, ensureTuned, type TuneOptions, type TuneResult } from "./backend/native/tune.js";
export { tuneFilePath, type GemmTuning, type TuneMeasurement } from "./backend/native/tune-cache.js";
