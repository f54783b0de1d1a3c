// Node-API wrappers of the dense decode step (native/include/dense_step.h).
//
//   densePlan(dims: Int32Array, nums: Float64Array, arrays: (TypedArray | null)[]) → plan
//     dims  [V, C, S, H, G, D, F, L, rms, rope, swiglu, act, format, seqLen, query, tied]
//           (act 1 fastgelu | 2 gelu; format 0 f32 | 1 bf16 | 2 f16 | 3 q8 | 4 q4; query 1: the
//           last of the L blocks is the query layer; tied 1: the token rows are the output matrix's)
//     nums  [eps, ropeTheta]
//     arrays  BLOCK_SLOTS per block (the Slot enum below, matrices as data, scales, mins), then
//             GLOBAL_SLOTS: final γ, final β, output matrix (data, scales, mins), f32 token table,
//             position table, query table. Absent ones null.
//   denseStep(plan, embed: Int32Array, slot: Int32Array, pos: Int32Array, caches: Float32Array[],
//             length, B, T, cap, pick: Int32Array, logits: Float32Array)
//     caches: each block's keys then values, [B, cap, G·D] each; logits [pick.length, V].
//
// A plan checks every array's type and length against dims once, and holds
// references to them (the weights stay the caller's); each step takes their
// pointers again and checks them again (an array detached since is an error),
// so nothing is trusted from one call to the next. It owns one thing: the q8
// and q4 matrices' packed copies for the integer kernels, made on the first
// step that reads them. The rules of args.h hold: the caches' elements are
// read first (a getter may run JS), index arrays are copied, then validated.
#include <napi.h>

#include <string>
#include <vector>

#include "args.h"
#include "dense_step.h"
#include "quant.h"

namespace sigma_napi {
namespace {

using sigma::WeightFormat;

// An array's place in a block's slots. A matrix takes three: data, scales, mins.
enum Slot {
  kLn1G, kLn1B, kKv, kKvBias = kKv + 3, kQ, kQBias = kQ + 3, kQnG, kKnG, kO, kOBias = kO + 3, kLn2G, kLn2B, kFc1,
  kFc1Bias = kFc1 + 3, kFc2, kFc2Bias = kFc2 + 3, kBlockSlots
};
enum Global { kFinalG, kFinalB, kTable, kTokenRows = kTable + 3, kPosTable, kQueryTable, kGlobalSlots };

const napi_type_tag kPlanTag = {0x5e1a9d3c71b24f08ULL, 0x9a61c2f0d3e4b517ULL};

// What one slot must hold: absent (null), or a typed array of `type` with at least `need` elements.
struct Want {
  bool present = false;
  napi_typedarray_type type = napi_float32_array;
  uint64_t need = 0;
  const char* what = "";
};

struct Matrix {
  int64_t E = 1, N = 0, K = 0;
  size_t slot = 0;  // the data's index in the arrays
  std::vector<uint8_t> packed;
  std::vector<uint16_t> packed_scales;
};

struct Plan {
  sigma::DenseDims d;
  WeightFormat format = WeightFormat::kF32;
  int64_t L = 0, seq_len = 0;
  bool query = false;
  std::vector<Want> wants;
  std::vector<napi_ref> refs;
  std::vector<Matrix> matrices;  // per block: kv, q (query layer), o, fc1, fc2; then the output matrix
  sigma::DenseScratch scratch;
  std::vector<sigma::DenseBlock> blocks;
  std::vector<int32_t> embed, slot, pos, pick;
  // Per step, kept to spare allocations: the arrays' pointers, the caches', the matrices.
  std::vector<void*> ptr;
  std::vector<float*> cache_ptr;
  std::vector<sigma::QuantMatrix> ms;
};

// A size the dims make: a product of them, refused when it overflows or
// exceeds what any typed array can hold (2^48 elements), so that an array
// checked against it is as long as the kernel will read.
uint64_t bounded(const Args& g, const Need& n) {
  if (n.overflow || n.n > (uint64_t{1} << 48)) {
    g.range_error("dims", "make a size of " + (n.overflow ? n.factors : std::to_string(n.n)) + " elements: too large for any array");
  }
  return n.n;
}

// The wants of a matrix of `rows` × K starting at slot i.
void want_matrix(const Args& g, std::vector<Want>& w, size_t i, WeightFormat f, uint64_t rows, int64_t K, const char* what) {
  const uint64_t per_row = static_cast<uint64_t>(sigma::quant_row_elements(f, K));
  const uint64_t groups = bounded(g, prod(rows, static_cast<uint64_t>(sigma::quant_groups(K))));
  const napi_typedarray_type type = f == WeightFormat::kF32 ? napi_float32_array
                                    : f == WeightFormat::kQ8 ? napi_int8_array
                                    : f == WeightFormat::kQ4 ? napi_uint8_array
                                                             : napi_uint16_array;
  w[i] = {true, type, bounded(g, prod(rows, per_row)), what};
  if (f == WeightFormat::kQ8 || f == WeightFormat::kQ4) w[i + 1] = {true, napi_uint16_array, groups, what};
  if (f == WeightFormat::kQ4) w[i + 2] = {true, napi_uint16_array, groups, what};
}

std::string slot_name(const Plan& p, size_t i) {
  const size_t blocks = static_cast<size_t>(p.L) * kBlockSlots;
  static const char* kBlockNames[] = {"ln1.gamma", "ln1.beta", "qkv", "qkv.scales", "qkv.mins", "qkv.bias", "q", "q.scales",
                                      "q.mins", "q.bias", "qNorm.gamma", "kNorm.gamma", "o", "o.scales", "o.mins", "o.bias",
                                      "ln2.gamma", "ln2.beta", "fc1", "fc1.scales", "fc1.mins", "fc1.bias", "fc2",
                                      "fc2.scales", "fc2.mins", "fc2.bias"};
  static const char* kGlobalNames[] = {"finalNorm.gamma", "finalNorm.beta", "output", "output.scales", "output.mins",
                                       "tokenEmbedding", "positionEmbedding", "queryEmbedding"};
  if (i < blocks) return "block " + std::to_string(i / kBlockSlots) + " " + kBlockNames[i % kBlockSlots];
  return kGlobalNames[i - blocks];
}

[[noreturn]] void bad_slot(const Args& g, const Plan& p, size_t i, napi_value v) {
  const Want& w = p.wants[i];
  const std::string name = slot_name(p, i);
  napi_valuetype t;
  const bool absent = napi_typeof(g.env, v, &t) == napi_ok && (t == napi_null || t == napi_undefined);
  if (!w.present) g.range_error("arrays", name + " must be null for this model's dims");
  if (absent) g.type_error("arrays", name + " is missing");
  void* data = nullptr;
  size_t n = 0;
  if (!g.typed(v, w.type, "arrays", name + " ", &data, &n)) g.type_error("arrays", name + " has the wrong type of typed array");
  g.check_length("arrays", name + " ", n, Need(w.need));
  g.type_error("arrays", name + " is detached");
}

// The pointer of slot i now (null when absent), its type and length checked
// against the plan (bad_slot says what is wrong; only then are names made).
void* fetch(const Args& g, const Plan& p, size_t i, napi_value v) {
  const Want& w = p.wants[i];
  if (!w.present) {
    napi_valuetype t;
    if (napi_typeof(g.env, v, &t) != napi_ok || (t != napi_null && t != napi_undefined)) bad_slot(g, p, i, v);
    return nullptr;
  }
  napi_typedarray_type type;
  size_t n = 0;
  void* data = nullptr;
  napi_value buffer;
  size_t offset;
  // A detached array reports no elements (every wanted one needs at least one).
  if (napi_get_typedarray_info(g.env, v, &type, &n, &data, &buffer, &offset) != napi_ok || type != w.type || n < w.need || n == 0) {
    bad_slot(g, p, i, v);
  }
  return data;
}

int64_t dim_at(const Args& g, const int32_t* dims, int i, const char* name, int64_t lo, int64_t hi) {
  const int64_t v = dims[i];
  if (v < lo || v > hi) g.range_error("dims", std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
  return v;
}

Napi::Value DensePlan(const Napi::CallbackInfo& info) {
  Args g(info, "densePlan", 3);
  // The arrays' elements first (a getter may run JS), bounded by a sane count.
  if (!info[2].IsArray()) g.type_error("arrays", "must be an array");
  const uint32_t count = info[2].As<Napi::Array>().Length();
  if (count > (1u << 20)) g.range_error("arrays", "has " + std::to_string(count) + " elements");
  std::vector<napi_value> arrays(count);
  for (uint32_t i = 0; i < count; ++i) arrays[i] = info[2].As<Napi::Array>().Get(i);
  size_t ndims = 0;
  void* dp = nullptr;
  if (!g.typed(info[0], napi_int32_array, "dims", "", &dp, &ndims)) g.type_error("dims", "must be an Int32Array");
  if (ndims != 16) g.range_error("dims", "must have 16 elements, got " + std::to_string(ndims));
  std::vector<int32_t> dims(static_cast<const int32_t*>(dp), static_cast<const int32_t*>(dp) + 16);
  size_t nnums = 0;
  void* np = nullptr;
  if (!g.typed(info[1], napi_float64_array, "nums", "", &np, &nnums)) g.type_error("nums", "must be a Float64Array");
  if (nnums != 2) g.range_error("nums", "must have 2 elements, got " + std::to_string(nnums));
  const double* nums = static_cast<const double*>(np);

  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  sigma::DenseDims& d = p.d;
  const int64_t big = 1 << 24;
  d.V = dim_at(g, dims.data(), 0, "V", 1, big);
  d.C = dim_at(g, dims.data(), 1, "C", 1, big);
  d.S = dim_at(g, dims.data(), 2, "S", 1, 1 << 16);
  d.H = dim_at(g, dims.data(), 3, "H", 1, 1 << 16);
  d.G = dim_at(g, dims.data(), 4, "G", 1, d.H);
  if (d.H % d.G) g.range_error("dims", "G must divide H");
  d.D = dim_at(g, dims.data(), 5, "D", 1, 1 << 16);
  d.F = dim_at(g, dims.data(), 6, "F", 1, big);
  p.L = dim_at(g, dims.data(), 7, "L", 1, 1 << 20);
  d.rms = dim_at(g, dims.data(), 8, "rms", 0, 1) == 1;
  d.rope = dim_at(g, dims.data(), 9, "rope", 0, 1) == 1;
  if (d.rope && d.D % 2) g.range_error("dims", "D must be even with rotary positions");
  d.swiglu = dim_at(g, dims.data(), 10, "swiglu", 0, 1) == 1;
  d.act = static_cast<sigma::DecodeAct>(dim_at(g, dims.data(), 11, "act", 1, 2));
  p.format = static_cast<WeightFormat>(dim_at(g, dims.data(), 12, "format", 0, 4));
  p.seq_len = dim_at(g, dims.data(), 13, "seqLen", 1, big);
  p.query = dim_at(g, dims.data(), 14, "query", 0, 1) == 1;
  const bool tied = dim_at(g, dims.data(), 15, "tied", 0, 1) == 1;
  d.eps = static_cast<float>(nums[0]);
  d.theta = nums[1];
  if (!(d.eps >= 0) || !(d.theta > 0)) g.range_error("nums", "eps must be ≥ 0 and ropeTheta > 0");
  const size_t total = static_cast<size_t>(p.L) * kBlockSlots + kGlobalSlots;
  if (count != total) g.range_error("arrays", "has " + std::to_string(count) + " elements but dims need " + std::to_string(total));

  // What each slot must hold.
  const uint64_t C = d.C, HD = d.H * d.D, W = d.G * d.D, F = d.F;
  const WeightFormat f = p.format;
  p.wants.assign(total, Want{});
  const auto f32 = [&](const Need& n) { return Want{true, napi_float32_array, bounded(g, n), ""}; };
  for (int64_t l = 0; l < p.L; ++l) {
    const size_t b = static_cast<size_t>(l) * kBlockSlots;
    const bool query = p.query && l == p.L - 1;
    const uint64_t kv_rows = bounded(g, Need((query ? 0 : HD) + 2 * W)), f1 = d.swiglu ? 2 * F : F;
    p.wants[b + kLn1G] = f32(C);
    if (!d.rms) p.wants[b + kLn1B] = f32(C);
    want_matrix(g, p.wants, b + kKv, f, kv_rows, d.C, "kv");
    p.matrices.push_back({1, static_cast<int64_t>(kv_rows), d.C, b + kKv, {}, {}});
    if (query) {
      want_matrix(g, p.wants, b + kQ, f, HD, d.C, "q");
      p.matrices.push_back({1, static_cast<int64_t>(HD), d.C, b + kQ, {}, {}});
    }
    want_matrix(g, p.wants, b + kO, f, C, static_cast<int64_t>(HD), "o");
    p.matrices.push_back({1, d.C, static_cast<int64_t>(HD), b + kO, {}, {}});
    p.wants[b + kLn2G] = f32(C);
    if (!d.rms) p.wants[b + kLn2B] = f32(C);
    want_matrix(g, p.wants, b + kFc1, f, f1, d.C, "fc1");
    p.matrices.push_back({1, static_cast<int64_t>(f1), d.C, b + kFc1, {}, {}});
    want_matrix(g, p.wants, b + kFc2, f, C, d.F, "fc2");
    p.matrices.push_back({1, d.C, d.F, b + kFc2, {}, {}});
    // Optional ones: biases and q/k norms, checked when given.
    const std::pair<size_t, uint64_t> optional[] = {{kKvBias, kv_rows}, {kQnG, d.D}, {kKnG, d.D}, {kOBias, C}, {kFc1Bias, f1}, {kFc2Bias, C}};
    for (const auto& [s, n] : optional) {
      napi_valuetype t;
      const bool given = napi_typeof(g.env, arrays[b + s], &t) == napi_ok && t != napi_null && t != napi_undefined;
      if (given) p.wants[b + s] = f32(n);
    }
    if (query) {
      napi_valuetype t;
      if (napi_typeof(g.env, arrays[b + kQBias], &t) == napi_ok && t != napi_null && t != napi_undefined) p.wants[b + kQBias] = f32(HD);
    }
  }
  const size_t gl = static_cast<size_t>(p.L) * kBlockSlots;
  p.wants[gl + kFinalG] = f32(C);
  if (!d.rms) p.wants[gl + kFinalB] = f32(C);
  want_matrix(g, p.wants, gl + kTable, f, bounded(g, prod(static_cast<uint64_t>(d.S), static_cast<uint64_t>(d.V))), d.C, "output");
  p.matrices.push_back({d.S, d.V, d.C, gl + kTable, {}, {}});
  if (!tied) p.wants[gl + kTokenRows] = f32(prod(static_cast<uint64_t>(d.S), static_cast<uint64_t>(d.V), C));
  if (!d.rope) p.wants[gl + kPosTable] = f32(prod(static_cast<uint64_t>(p.seq_len), C));
  if (p.query) p.wants[gl + kQueryTable] = f32(prod(static_cast<uint64_t>(p.seq_len), C));

  // Every array checked, then held (nothing held when one is refused).
  for (size_t i = 0; i < total; ++i) fetch(g, p, i, arrays[i]);
  p.refs.assign(total, nullptr);
  for (size_t i = 0; i < total; ++i) {
    if (p.wants[i].present && napi_create_reference(g.env, arrays[i], 1, &p.refs[i]) != napi_ok) {
      for (napi_ref r : p.refs) if (r) napi_delete_reference(g.env, r);
      throw Napi::Error::New(g.env, "densePlan: could not hold the arrays");
    }
  }
  p.blocks.resize(static_cast<size_t>(p.L));
  Plan* raw = plan.release();
  auto external = Napi::External<Plan>::New(info.Env(), raw, [](Napi::Env env, Plan* q) {
    for (napi_ref r : q->refs) if (r) napi_delete_reference(env, r);
    delete q;
  });
  napi_type_tag_object(info.Env(), external, &kPlanTag);
  return external;
}

Napi::Value DenseStep(const Napi::CallbackInfo& info) {
  Args g(info, "denseStep", 11);
  bool tagged = false;
  if (!info[0].IsExternal() || napi_check_object_type_tag(g.env, info[0], &kPlanTag, &tagged) != napi_ok || !tagged) {
    g.type_error("plan", "must be a plan made by densePlan");
  }
  Plan& p = *info[0].As<Napi::External<Plan>>().Data();
  const int64_t L = p.L;
  // The caches' elements first (a getter may run JS).
  if (!info[4].IsArray()) g.type_error("caches", "must be an array of Float32Arrays");
  const uint32_t nc = info[4].As<Napi::Array>().Length();
  if (nc != static_cast<uint32_t>(2 * L)) g.range_error("caches", "has " + std::to_string(nc) + " arrays but the plan's " + std::to_string(L) + " blocks need " + std::to_string(2 * L));
  std::vector<napi_value> caches(nc);
  for (uint32_t i = 0; i < nc; ++i) caches[i] = info[4].As<Napi::Array>().Get(i);
  const int64_t length = g.dim(5, "length"), B = g.dim(6, "B"), T = g.dim(7, "T"), cap = g.dim(8, "cap");
  const sigma::DenseDims& d = p.d;
  const int64_t R = B * T;
  if (R < 1 || R > (1 << 16)) g.range_error("B", "B·T must be in [1, 65536], got " + std::to_string(R));
  if (length + T > cap) g.range_error("length", std::to_string(length) + " + " + std::to_string(T) + " positions exceed the caches' capacity " + std::to_string(cap));
  // Index arrays copied, then checked.
  const auto copy = [&](size_t i, const char* name, std::vector<int32_t>& to, uint64_t n, int64_t hi) {
    const int32_t* src = g.i32_copy(i, name, Need(n));
    to.assign(src, src + n);
    for (uint64_t r = 0; r < n; ++r) {
      if (to[r] < 0 || to[r] >= hi) g.range_error(name, "element " + std::to_string(r) + " is " + std::to_string(to[r]) + ", outside [0, " + std::to_string(hi) + ")");
    }
  };
  copy(1, "embed", p.embed, static_cast<uint64_t>(R), d.S * d.V);
  copy(2, "slot", p.slot, static_cast<uint64_t>(R), d.S);
  copy(3, "pos", p.pos, static_cast<uint64_t>(R), p.seq_len);
  size_t npick = 0;
  void* pk = nullptr;
  if (!g.typed(info[9], napi_int32_array, "pick", "", &pk, &npick)) g.type_error("pick", "must be an Int32Array");
  if (npick < 1) g.range_error("pick", "must name at least one row");
  copy(9, "pick", p.pick, npick, R);
  float* logits = g.f32(10, "logits", prod(npick, static_cast<uint64_t>(d.V)));
  const Need cache_need = prod(static_cast<uint64_t>(B), static_cast<uint64_t>(cap), static_cast<uint64_t>(d.G * d.D));
  std::vector<float*>& cache_ptr = p.cache_ptr;
  cache_ptr.assign(nc, nullptr);
  for (uint32_t i = 0; i < nc; ++i) {
    void* data = nullptr;
    size_t n = 0;
    const std::string what = "element " + std::to_string(i) + " ";
    if (!g.typed(caches[i], napi_float32_array, "caches", what, &data, &n)) g.type_error("caches", what + "must be a Float32Array");
    g.check_length("caches", what, n, cache_need);
    cache_ptr[i] = static_cast<float*>(data);
  }
  // The plan's arrays, fetched and checked again.
  const size_t total = p.refs.size();
  std::vector<void*>& ptr = p.ptr;
  ptr.assign(total, nullptr);
  for (size_t i = 0; i < total; ++i) {
    if (!p.refs[i]) continue;
    napi_value v;
    if (napi_get_reference_value(g.env, p.refs[i], &v) != napi_ok || v == nullptr) g.type_error("plan", "lost one of its arrays");
    ptr[i] = fetch(g, p, i, v);
  }
  const auto matrix = [&](size_t i) {
    sigma::QuantMatrix w;
    w.format = p.format;
    w.data = ptr[i];
    w.scales = static_cast<const uint16_t*>(ptr[i + 1]);
    w.mins = static_cast<const uint16_t*>(ptr[i + 2]);
    return w;
  };
  // q8 and q4: each matrix's packed copy, made once where the integer kernels read it.
  const bool packs = (p.format == WeightFormat::kQ8 || p.format == WeightFormat::kQ4) && sigma::decode_packs();
  std::vector<sigma::QuantMatrix>& ms = p.ms;
  ms.assign(p.matrices.size(), sigma::QuantMatrix{});
  for (size_t m = 0; m < p.matrices.size(); ++m) {
    Matrix& mx = p.matrices[m];
    ms[m] = matrix(mx.slot);
    if (!packs) continue;
    if (mx.packed.empty()) {
      mx.packed.resize(static_cast<size_t>(sigma::packed_bytes(p.format, mx.E, mx.N, mx.K)));
      mx.packed_scales.resize(static_cast<size_t>(sigma::packed_factors(p.format, mx.E, mx.N, mx.K)));
      sigma::pack_quant(ms[m], mx.E, mx.N, mx.K, mx.packed.data(), mx.packed_scales.data());
    }
    ms[m].packed = mx.packed.data();
    ms[m].packed_scales = mx.packed_scales.data();
  }
  size_t m = 0;
  const auto f32 = [&](size_t i) { return static_cast<const float*>(ptr[i]); };
  for (int64_t l = 0; l < L; ++l) {
    const size_t b = static_cast<size_t>(l) * kBlockSlots;
    sigma::DenseBlock& k = p.blocks[static_cast<size_t>(l)];
    k.query = p.query && l == L - 1;
    k.ln1_g = f32(b + kLn1G);
    k.ln1_b = f32(b + kLn1B);
    k.kv = ms[m++];
    k.kv_bias = f32(b + kKvBias);
    if (k.query) k.q = ms[m++];
    k.q_bias = f32(b + kQBias);
    k.qn_g = f32(b + kQnG);
    k.kn_g = f32(b + kKnG);
    k.o = ms[m++];
    k.o_bias = f32(b + kOBias);
    k.ln2_g = f32(b + kLn2G);
    k.ln2_b = f32(b + kLn2B);
    k.fc1 = ms[m++];
    k.fc1_bias = f32(b + kFc1Bias);
    k.fc2 = ms[m++];
    k.fc2_bias = f32(b + kFc2Bias);
    k.k_cache = cache_ptr[2 * l];
    k.v_cache = cache_ptr[2 * l + 1];
  }
  const size_t gl = static_cast<size_t>(L) * kBlockSlots;
  sigma::DenseRun run;
  run.embed = p.embed.data();
  run.slot = p.slot.data();
  run.pos = p.pos.data();
  run.B = B;
  run.T = T;
  run.length = length;
  run.cap = cap;
  run.pick = p.pick.data();
  run.P = static_cast<int64_t>(npick);
  run.logits = logits;
  run.table = ms[m];
  run.token_rows = f32(gl + kTokenRows);
  run.pos_table = f32(gl + kPosTable);
  run.query_table = f32(gl + kQueryTable);
  run.final_g = f32(gl + kFinalG);
  run.final_b = f32(gl + kFinalB);
  sigma::dense_step(d, p.blocks.data(), L, run, p.scratch);
  return info.Env().Undefined();
}

}  // namespace

void InitDense(Napi::Env env, Napi::Object exports) {
  Export(env, exports, "densePlan", DensePlan);
  Export(env, exports, "denseStep", DenseStep);
}

}  // namespace sigma_napi
