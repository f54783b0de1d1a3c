// Argument validation for the Node-API wrappers. Every wrapper checks each
// argument's type and size before any kernel runs, and throws a JS error that
// names the kernel and the argument: a wrong call never reaches C++ memory.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sigma_napi {

struct Args {
  const Napi::CallbackInfo& info;
  const char* kernel;

  Args(const Napi::CallbackInfo& i, const char* k, size_t count) : info(i), kernel(k) {
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

  // A Float32Array with at least `need` elements.
  float* f32(size_t i, const char* name, uint64_t need) const {
    Napi::Value v = info[i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      type_error(name, "must be a Float32Array (the native backend is float32-only; float64 runs on the reference backend)");
    }
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    if (a.ElementLength() < need) {
      range_error(name, "has " + std::to_string(a.ElementLength()) + " elements but the sizes given need " +
                            std::to_string(need));
    }
    return a.Data();
  }

  // An array of `count` Float32Arrays with at least `need` elements each (per-expert
  // matrices at their own addresses); the pointers go into `out`.
  void f32_parts(size_t i, const char* name, uint64_t count, uint64_t need, std::vector<float*>& out) const {
    Napi::Value v = info[i];
    if (!v.IsArray()) type_error(name, "must be a Float32Array or an array of Float32Arrays, one per expert");
    Napi::Array arr = v.As<Napi::Array>();
    if (arr.Length() != count) {
      range_error(name, "has " + std::to_string(arr.Length()) + " parts but E = " + std::to_string(count));
    }
    out.resize(count);
    for (uint32_t e = 0; e < count; ++e) {
      Napi::Value p = arr.Get(e);
      if (!p.IsTypedArray() || p.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
        type_error(name, "part " + std::to_string(e) + " must be a Float32Array");
      }
      Napi::Float32Array a = p.As<Napi::Float32Array>();
      if (a.ElementLength() < need) {
        range_error(name, "part " + std::to_string(e) + " has " + std::to_string(a.ElementLength()) +
                              " elements but N·K = " + std::to_string(need));
      }
      out[e] = a.Data();
    }
  }

  // Number of elements of a Float32Array argument (after f32() has checked it).
  size_t length(size_t i) const { return info[i].As<Napi::TypedArray>().ElementLength(); }

  // An Int32Array with at least `need` elements.
  int32_t* i32(size_t i, const char* name, uint64_t need) const {
    Napi::Value v = info[i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
      type_error(name, "must be an Int32Array");
    }
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    if (a.ElementLength() < need) {
      range_error(name, "has " + std::to_string(a.ElementLength()) + " elements but the sizes given need " +
                            std::to_string(need));
    }
    return a.Data();
  }

  // A non-negative integer size (below 2^31).
  int64_t dim(size_t i, const char* name) const {
    Napi::Value v = info[i];
    if (!v.IsNumber()) type_error(name, "must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != std::floor(d) || d > 2147483647.0) {
      range_error(name, "must be a non-negative integer below 2^31, got " + std::to_string(d));
    }
    return static_cast<int64_t>(d);
  }

  // Any finite-or-not number (e.g. a learning rate, a scale).
  double num(size_t i, const char* name) const {
    Napi::Value v = info[i];
    if (!v.IsNumber()) type_error(name, "must be a number");
    return v.As<Napi::Number>().DoubleValue();
  }

  // An integer that may be negative (e.g. an ignore index).
  int64_t integer(size_t i, const char* name) const {
    Napi::Value v = info[i];
    if (!v.IsNumber()) type_error(name, "must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (d != std::floor(d) || std::fabs(d) > 2147483647.0) range_error(name, "must be a 32-bit integer");
    return static_cast<int64_t>(d);
  }

  bool flag(size_t i, const char* name) const {
    Napi::Value v = info[i];
    if (!v.IsBoolean()) type_error(name, "must be a boolean");
    return v.As<Napi::Boolean>().Value();
  }
};

// Product of sizes, checked against overflow (sizes are each < 2^31).
inline uint64_t prod(uint64_t a, uint64_t b) { return a * b; }
inline uint64_t prod(uint64_t a, uint64_t b, uint64_t c) { return a * b * c; }
inline uint64_t prod(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { return a * b * c * d; }

}  // namespace sigma_napi
