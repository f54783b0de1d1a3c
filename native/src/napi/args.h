// Argument validation for the Node-API wrappers. Every wrapper checks each
// argument's type and size before any kernel runs, and throws a JS error that
// names the kernel and the argument: a wrong call never reaches C++ memory.
//
// The rules every wrapper follows (issue 19):
//  - Sizes are integers in [0, 2^31); every product of sizes that bounds a
//    memory access is computed with overflow detection (prod() below) and
//    compared with the length of the array it indexes. A product that
//    overflows 64 bits is an error, never a small wrapped number.
//  - No JS runs between taking an array's pointer and the kernel using it.
//    Reading numbers, booleans and typed arrays runs no JS (no valueOf, no
//    getters: a non-number is a TypeError, not converted). The one exception
//    is reading the elements of an array of parts (an element may be a
//    getter, on the array or on Array.prototype for a hole), which can run
//    any JS: detach or resize a buffer, rewrite an index array, call a kernel.
//    So wrappers that take parts read those elements FIRST (elements()), and
//    only then take pointers and check anything.
//  - A detached array (its ArrayBuffer transferred) is a TypeError, whatever
//    the sizes: its data pointer is gone.
//  - Index arrays that steer memory access (targets, ids, idx, expertIds,
//    offsets) are copied into private memory, then validated, and the kernel
//    reads the copy: neither an output that shares their ArrayBuffer (written
//    while the kernel runs) nor another thread writing a SharedArrayBuffer can
//    change a validated index.
//  - A C++ exception from a kernel (std::bad_alloc for a scratch buffer) is
//    a JS RangeError naming the kernel (guarded() below), not a crash.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace sigma_napi {

// The number of elements an array must have: a product of sizes, or the
// knowledge that the product overflowed 64 bits (then `factors` say which).
struct Need {
  uint64_t n = 0;
  bool overflow = false;
  std::string factors;  // "4194304·2097152·2097152", set only on overflow
  Need(uint64_t v = 0) : n(v) {}  // NOLINT: a plain count converts implicitly
};

// Product of sizes with overflow detection. A zero factor makes it 0 (exact).
inline Need prod(std::initializer_list<uint64_t> fs) {
  Need r(1);
  for (uint64_t f : fs) {
    if (f == 0) return Need(0);
  }
  for (uint64_t f : fs) {
    if (__builtin_mul_overflow(r.n, f, &r.n)) r.overflow = true;
  }
  if (r.overflow) {
    for (uint64_t f : fs) r.factors += (r.factors.empty() ? "" : "·") + std::to_string(f);
  }
  return r;
}
inline Need prod(uint64_t a, uint64_t b) { return prod({a, b}); }
inline Need prod(uint64_t a, uint64_t b, uint64_t c) { return prod({a, b, c}); }
inline Need prod(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { return prod({a, b, c, d}); }

struct Args {
  const Napi::CallbackInfo& info;
  napi_env env;
  const char* kernel;

  Args(const Napi::CallbackInfo& i, const char* k, size_t count) : info(i), env(i.Env()), kernel(k) {
    if (info.Length() != count) {
      throw Napi::TypeError::New(info.Env(), std::string(kernel) + ": expected " + std::to_string(count) +
                                                 " arguments, got " + std::to_string(info.Length()));
    }
  }

  [[noreturn]] void type_error(const char* name, const std::string& what) const {
    throw Napi::TypeError::New(info.Env(), std::string(kernel) + ": argument \"" + name + "\" " + what);
  }
  [[noreturn]] void range_error(const char* name, const std::string& what) const {
    throw Napi::RangeError::New(info.Env(), std::string(kernel) + ": argument \"" + name + "\" " + what);
  }

  // A typed array of type `want`: its data and element count.
  // Returns false when the argument is not a typed array of that type; a
  // detached one is an error here.
  bool typed(napi_value v, napi_typedarray_type want, const char* name, const std::string& what, void** data,
             size_t* length) const {
    napi_typedarray_type type;
    napi_value buffer;
    size_t offset;
    if (napi_get_typedarray_info(env, v, &type, length, data, &buffer, &offset) != napi_ok || type != want) {
      return false;
    }
    if (*length == 0) {
      // Only an empty view can be detached (a detached one reports 0 elements).
      bool detached = false;
      if (napi_is_detached_arraybuffer(env, buffer, &detached) == napi_ok && detached) {
        type_error(name, what + "is detached (its ArrayBuffer was transferred): it has no memory left to use");
      }
    }
    return true;
  }

  void check_length(const char* name, const std::string& what, size_t length, const Need& need) const {
    if (need.overflow) {
      range_error(name, what + "would need " + need.factors +
                            " elements: the sizes given are too large (their product overflows 64 bits)");
    }
    if (length < need.n) {
      range_error(name, what + "has " + std::to_string(length) + " elements but the sizes given need " +
                            std::to_string(need.n));
    }
  }

  // A Float32Array with at least `need` elements; its length goes to *length when asked.
  float* f32(size_t i, const char* name, const Need& need, size_t* length = nullptr) const {
    void* data = nullptr;
    size_t n = 0;
    if (!typed(info[i], napi_float32_array, name, "", &data, &n)) {
      type_error(name, "must be a Float32Array (the native backend is float32-only; float64 runs on the reference backend)");
    }
    check_length(name, "", n, need);
    if (length) *length = n;
    return static_cast<float*>(data);
  }

  // An Int32Array the kernel writes (an output), with at least `need` elements.
  int32_t* i32_out(size_t i, const char* name, const Need& need) const {
    void* data = nullptr;
    size_t n = 0;
    if (!typed(info[i], napi_int32_array, name, "", &data, &n)) type_error(name, "must be an Int32Array");
    check_length(name, "", n, need);
    return static_cast<int32_t*>(data);
  }

  // Checks that argument i is an Int32Array of at least `need` elements,
  // without keeping anything: to bound a count before reading an array of
  // parts (which runs JS, so the array is checked again afterwards).
  void i32_precheck(size_t i, const char* name, const Need& need) const {
    void* data = nullptr;
    size_t n = 0;
    if (!typed(info[i], napi_int32_array, name, "", &data, &n)) type_error(name, "must be an Int32Array");
    check_length(name, "", n, need);
  }

  // An Int32Array of indices the kernel reads: its first `need` elements,
  // copied into this thread's private buffer (see the rules above). The copy
  // stays valid until the next i32_copy on this thread (one per call).
  const int32_t* i32_copy(size_t i, const char* name, const Need& need) const {
    void* data = nullptr;
    size_t n = 0;
    if (!typed(info[i], napi_int32_array, name, "", &data, &n)) type_error(name, "must be an Int32Array");
    check_length(name, "", n, need);
    thread_local std::vector<int32_t> copy;
    copy.resize(need.n == 0 ? 1 : static_cast<size_t>(need.n));
    if (need.n) std::memcpy(copy.data(), data, sizeof(int32_t) * need.n);
    return copy.data();
  }

  // Phase one for an array of parts (per-expert matrices at their own
  // addresses): the `count` elements of argument i, read before anything else
  // is checked, since a getter may run JS. Nothing is checked about them here.
  // `count` must already be bounded by the length of a typed array of the
  // call (i32_precheck on the offsets, or the copied steps): a sparse JS array
  // of 2^31 − 1 holes is cheap to make, and each element read makes a handle.
  std::vector<napi_value> elements(size_t i, const char* name, uint64_t count) const {
    Napi::Value v = info[i];
    if (!v.IsArray()) type_error(name, "must be a Float32Array or an array of Float32Arrays, one per expert");
    Napi::Array arr = v.As<Napi::Array>();
    const uint32_t len = arr.Length();
    if (len != count) {
      range_error(name, "has " + std::to_string(len) + " parts but E = " + std::to_string(count));
    }
    std::vector<napi_value> out(len);
    for (uint32_t e = 0; e < len; ++e) out[e] = arr.Get(e);  // may run JS
    return out;
  }

  // Phase two: each part a Float32Array of at least `need` elements; pointers into `out`.
  void f32_parts(const std::vector<napi_value>& parts, const char* name, const Need& need,
                 std::vector<float*>& out, const char* need_is = "N·K") const {
    out.resize(parts.size());
    for (size_t e = 0; e < parts.size(); ++e) {
      const std::string what = "part " + std::to_string(e) + " ";
      void* data = nullptr;
      size_t n = 0;
      if (!typed(parts[e], napi_float32_array, name, what, &data, &n)) type_error(name, what + "must be a Float32Array");
      if (need.overflow) check_length(name, what, n, need);
      if (n < need.n) {
        range_error(name, what + "has " + std::to_string(n) + " elements but " + need_is + " = " + std::to_string(need.n));
      }
      out[e] = static_cast<float*>(data);
    }
  }

  // A non-negative integer size (below 2^31). Only a number is accepted: no
  // conversion (valueOf) runs.
  int64_t dim(size_t i, const char* name) const {
    double d = 0;
    if (napi_get_value_double(env, info[i], &d) != napi_ok) type_error(name, "must be a number");
    if (!(d >= 0) || d != std::floor(d) || d > 2147483647.0) {
      range_error(name, "must be a non-negative integer below 2^31, got " + std::to_string(d));
    }
    return static_cast<int64_t>(d);
  }

  // Any finite-or-not number (e.g. a learning rate, a scale).
  double num(size_t i, const char* name) const {
    double d = 0;
    if (napi_get_value_double(env, info[i], &d) != napi_ok) type_error(name, "must be a number");
    return d;
  }

  // An integer that may be negative (e.g. an ignore index).
  int64_t integer(size_t i, const char* name) const {
    const double d = num(i, name);
    if (d != std::floor(d) || std::fabs(d) > 2147483647.0) range_error(name, "must be a 32-bit integer");
    return static_cast<int64_t>(d);
  }

  bool flag(size_t i, const char* name) const {
    bool b = false;
    if (napi_get_value_bool(env, info[i], &b) != napi_ok) type_error(name, "must be a boolean");
    return b;
  }
};

// Runs a wrapper and turns a C++ exception other than a JS error (a kernel's
// scratch allocation failing) into a RangeError naming the kernel.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, const char* kernel, F&& f) {
  try {
    return f(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(info.Env(), std::string(kernel) +
                                                ": out of memory for the kernel's scratch buffers (the sizes given are too large)");
  } catch (const std::length_error&) {
    throw Napi::RangeError::New(info.Env(), std::string(kernel) +
                                                ": out of memory for the kernel's scratch buffers (the sizes given are too large)");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string(kernel) + ": " + e.what());
  }
}

// Registers a wrapper under `name`, guarded.
inline void Export(Napi::Env env, Napi::Object exports, const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
  exports.Set(name, Napi::Function::New(
                        env, [name, fn](const Napi::CallbackInfo& info) { return guarded(info, name, fn); }, name));
}

}  // namespace sigma_napi
