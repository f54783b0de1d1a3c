// sigma_mpi: a thin Node-API binding to the MPI C library, built only when
// mpi.h is found (scripts/mpi-detect.cjs feeds binding.gyp). It holds no
// training logic: each export validates its arguments, hands typed arrays'
// memory straight to MPI (no copies) and turns a failed MPI call into a JS
// Error carrying MPI's own message. src/dist/mpi.ts is its only loader.
//
// Handles. Communicators are small integers into a table (0 is
// MPI_COMM_WORLD, split() adds more); non-blocking requests likewise, each
// holding a reference to its buffer so that the garbage collector cannot free
// memory MPI still writes into.
//
// Errors. After init, MPI_COMM_WORLD (and so every communicator split from it)
// uses MPI_ERRORS_RETURN: a failed call returns here instead of aborting the
// process, and the caller decides (the CLI prints its message and calls
// abort(), which stops every rank).
//
// Threads. Every call must come from the thread that called initThread (the
// JS main thread): Sigma asks for MPI_THREAD_FUNNELED. Blocking calls block
// that thread; overlap comes from iallreduce + test/wait.
#include <mpi.h>
#include <napi.h>

#include <climits>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

std::vector<MPI_Comm> comms;  // index = handle; MPI_COMM_NULL once freed

struct Pending {
  MPI_Request request;
  Napi::Reference<Napi::Value> buffer;  // kept alive until the request completes
};
std::unordered_map<int32_t, Pending> pending;
int32_t next_request = 1;

std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(text, static_cast<size_t>(len));
}

void check(Napi::Env env, int rc, const char* call) {
  if (rc != MPI_SUCCESS) throw Napi::Error::New(env, std::string(call) + " failed: " + mpi_error_text(rc));
}

void require_ready(Napi::Env env, const char* fn) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init) throw Napi::Error::New(env, std::string(fn) + ": MPI is not initialised (call initThread first)");
  if (fin) throw Napi::Error::New(env, std::string(fn) + ": MPI was finalised");
}

MPI_Comm comm_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Env env = info.Env();
  require_ready(env, fn);
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(env, std::string(fn) + ": argument \"comm\" must be a communicator handle (a number)");
  double h = info[i].As<Napi::Number>().DoubleValue();
  if (!(h >= 0) || h != static_cast<int64_t>(h) || h >= static_cast<double>(comms.size()) || comms[static_cast<size_t>(h)] == MPI_COMM_NULL) {
    throw Napi::RangeError::New(env, std::string(fn) + ": " + std::to_string(h) + " is not a live communicator handle");
  }
  return comms[static_cast<size_t>(h)];
}

int int_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int lo, int hi) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(env, std::string(fn) + ": argument \"" + name + "\" must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= lo && v <= hi) || v != static_cast<int64_t>(v)) {
    throw Napi::RangeError::New(env, std::string(fn) + ": argument \"" + name + "\" must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  }
  return static_cast<int>(v);
}

// A typed array's memory, its MPI element type and its element count.
struct Buf {
  void* data;
  int count;
  MPI_Datatype type;
  napi_typedarray_type kind;
};

Buf buf_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsTypedArray()) throw Napi::TypeError::New(env, std::string(fn) + ": argument \"" + name + "\" must be a typed array");
  Napi::TypedArray t = info[i].As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = t.ArrayBuffer();
  if (ab.IsDetached()) throw Napi::TypeError::New(env, std::string(fn) + ": argument \"" + name + "\" is detached");
  if (t.ElementLength() > static_cast<size_t>(INT_MAX)) {
    throw Napi::RangeError::New(env, std::string(fn) + ": argument \"" + name + "\" has " + std::to_string(t.ElementLength()) + " elements, more than one MPI call moves (2^31 - 1)");
  }
  MPI_Datatype type;
  switch (t.TypedArrayType()) {
    case napi_float32_array: type = MPI_FLOAT; break;
    case napi_float64_array: type = MPI_DOUBLE; break;
    case napi_int32_array: type = MPI_INT; break;
    case napi_uint32_array: type = MPI_UNSIGNED; break;
    case napi_uint8_array: type = MPI_UNSIGNED_CHAR; break;
    default: throw Napi::TypeError::New(env, std::string(fn) + ": argument \"" + name + "\" must be a Float32Array, Float64Array, Int32Array, Uint32Array or Uint8Array");
  }
  char* base = static_cast<char*>(ab.Data());
  return Buf{base + t.ByteOffset(), static_cast<int>(t.ElementLength()), type, t.TypedArrayType()};
}

MPI_Op op_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsString()) throw Napi::TypeError::New(env, std::string(fn) + ": argument \"op\" must be \"sum\", \"max\" or \"min\"");
  std::string op = info[i].As<Napi::String>().Utf8Value();
  if (op == "sum") return MPI_SUM;
  if (op == "max") return MPI_MAX;
  if (op == "min") return MPI_MIN;
  throw Napi::RangeError::New(env, std::string(fn) + ": argument \"op\" must be \"sum\", \"max\" or \"min\", not \"" + op + "\"");
}

const char* level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "single";
    case MPI_THREAD_FUNNELED: return "funneled";
    case MPI_THREAD_SERIALIZED: return "serialized";
    case MPI_THREAD_MULTIPLE: return "multiple";
    default: return "unknown";
  }
}

// initThread(level) → { provided, rank, size }; level "single" | "funneled" | "serialized" | "multiple".
Napi::Value InitThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "initThread: expected the thread level as a string");
  std::string want = info[0].As<Napi::String>().Utf8Value();
  int required;
  if (want == "single") required = MPI_THREAD_SINGLE;
  else if (want == "funneled") required = MPI_THREAD_FUNNELED;
  else if (want == "serialized") required = MPI_THREAD_SERIALIZED;
  else if (want == "multiple") required = MPI_THREAD_MULTIPLE;
  else throw Napi::RangeError::New(env, "initThread: level must be single, funneled, serialized or multiple, not \"" + want + "\"");
  int init = 0;
  MPI_Initialized(&init);
  if (init) throw Napi::Error::New(env, "initThread: MPI is already initialised");
  int provided = 0;
  check(env, MPI_Init_thread(nullptr, nullptr, required, &provided), "MPI_Init_thread");
  check(env, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  comms.assign(1, MPI_COMM_WORLD);
  int rank = 0, size = 0;
  check(env, MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check(env, MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  Napi::Object o = Napi::Object::New(env);
  o.Set("provided", level_name(provided));
  o.Set("rank", rank);
  o.Set("size", size);
  return o;
}

Napi::Value State(const Napi::CallbackInfo& info) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return Napi::String::New(info.Env(), fin ? "finalized" : init ? "initialized" : "uninitialized");
}

Napi::Value Rank(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "rank");
  int r = 0;
  check(info.Env(), MPI_Comm_rank(c, &r), "MPI_Comm_rank");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value Size(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "size");
  int s = 0;
  check(info.Env(), MPI_Comm_size(c, &s), "MPI_Comm_size");
  return Napi::Number::New(info.Env(), s);
}

// allreduce(comm, buf, op): in place, every rank ends with the element-wise reduction.
Napi::Value Allreduce(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "allreduce");
  Buf b = buf_arg(info, 1, "allreduce", "buf");
  MPI_Op op = op_arg(info, 2, "allreduce");
  if (b.type == MPI_UNSIGNED_CHAR) throw Napi::TypeError::New(info.Env(), "allreduce: bytes cannot be reduced; pass a Float32Array, Float64Array, Int32Array or Uint32Array");
  check(info.Env(), MPI_Allreduce(MPI_IN_PLACE, b.data, b.count, b.type, op, c), "MPI_Allreduce");
  return info.Env().Undefined();
}

// iallreduce(comm, buf, op) → request id: starts an in-place allreduce; test() or wait() completes it.
Napi::Value Iallreduce(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "iallreduce");
  Buf b = buf_arg(info, 1, "iallreduce", "buf");
  MPI_Op op = op_arg(info, 2, "iallreduce");
  if (b.type == MPI_UNSIGNED_CHAR) throw Napi::TypeError::New(info.Env(), "iallreduce: bytes cannot be reduced");
  MPI_Request req;
  check(info.Env(), MPI_Iallreduce(MPI_IN_PLACE, b.data, b.count, b.type, op, c, &req), "MPI_Iallreduce");
  int32_t id = next_request++;
  pending.emplace(id, Pending{req, Napi::Persistent(info[1])});
  return Napi::Number::New(info.Env(), id);
}

Pending& request_arg(const Napi::CallbackInfo& info, const char* fn) {
  require_ready(info.Env(), fn);
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(fn) + ": expected a request id");
  int32_t id = info[0].As<Napi::Number>().Int32Value();
  auto it = pending.find(id);
  if (it == pending.end()) throw Napi::RangeError::New(info.Env(), std::string(fn) + ": " + std::to_string(id) + " is not a pending request");
  return it->second;
}

// test(id) → true when the request completed (it is then gone), false while it runs. Each call lets MPI progress.
Napi::Value Test(const Napi::CallbackInfo& info) {
  Pending& p = request_arg(info, "test");
  int done = 0;
  check(info.Env(), MPI_Test(&p.request, &done, MPI_STATUS_IGNORE), "MPI_Test");
  if (done) pending.erase(info[0].As<Napi::Number>().Int32Value());
  return Napi::Boolean::New(info.Env(), done != 0);
}

// wait(id): blocks until the request completes.
Napi::Value Wait(const Napi::CallbackInfo& info) {
  Pending& p = request_arg(info, "wait");
  int rc = MPI_Wait(&p.request, MPI_STATUS_IGNORE);
  pending.erase(info[0].As<Napi::Number>().Int32Value());
  check(info.Env(), rc, "MPI_Wait");
  return info.Env().Undefined();
}

// broadcast(comm, buf, root): root's buf is copied into every rank's.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "broadcast");
  Buf b = buf_arg(info, 1, "broadcast", "buf");
  int size = 0;
  check(info.Env(), MPI_Comm_size(c, &size), "MPI_Comm_size");
  int root = int_arg(info, 2, "broadcast", "root", 0, size - 1);
  check(info.Env(), MPI_Bcast(b.data, b.count, b.type, root, c), "MPI_Bcast");
  return info.Env().Undefined();
}

// allgather(comm, send, recv): recv = every rank's send, rank after rank (recv.length = size · send.length).
Napi::Value Allgather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = comm_arg(info, 0, "allgather");
  Buf s = buf_arg(info, 1, "allgather", "send");
  Buf r = buf_arg(info, 2, "allgather", "recv");
  int size = 0;
  check(env, MPI_Comm_size(c, &size), "MPI_Comm_size");
  if (s.kind != r.kind) throw Napi::TypeError::New(env, "allgather: send and recv must be typed arrays of the same type");
  if (static_cast<int64_t>(s.count) * size != r.count) {
    throw Napi::RangeError::New(env, "allgather: recv has " + std::to_string(r.count) + " elements, needs " + std::to_string(size) + " · " + std::to_string(s.count));
  }
  check(env, MPI_Allgather(s.data, s.count, s.type, r.data, s.count, r.type, c), "MPI_Allgather");
  return env.Undefined();
}

// alltoall(comm, send, recv): equal blocks of send.length / size elements; block j goes to rank j.
Napi::Value Alltoall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = comm_arg(info, 0, "alltoall");
  Buf s = buf_arg(info, 1, "alltoall", "send");
  Buf r = buf_arg(info, 2, "alltoall", "recv");
  int size = 0;
  check(env, MPI_Comm_size(c, &size), "MPI_Comm_size");
  if (s.kind != r.kind) throw Napi::TypeError::New(env, "alltoall: send and recv must be typed arrays of the same type");
  if (s.count != r.count || s.count % size != 0) {
    throw Napi::RangeError::New(env, "alltoall: send and recv must have the same length, a multiple of the " + std::to_string(size) + " ranks (" + std::to_string(s.count) + ", " + std::to_string(r.count) + ")");
  }
  int block = s.count / size;
  check(env, MPI_Alltoall(s.data, block, s.type, r.data, block, r.type, c), "MPI_Alltoall");
  return env.Undefined();
}

// Counts and displacements (Int32Array, one per rank) that must stay inside an array of `length` elements.
const int* layout_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int size) {
  Napi::Env env = info.Env();
  Buf b = buf_arg(info, i, "alltoallv", name);
  if (b.kind != napi_int32_array || b.count != size) {
    throw Napi::TypeError::New(env, std::string("alltoallv: argument \"") + name + "\" must be an Int32Array of " + std::to_string(size) + " (one per rank)");
  }
  return static_cast<const int*>(b.data);
}

void check_layout(Napi::Env env, const int* counts, const int* displs, int size, int length, const char* which) {
  for (int j = 0; j < size; j++) {
    if (counts[j] < 0 || displs[j] < 0 || static_cast<int64_t>(counts[j]) + displs[j] > length) {
      throw Napi::RangeError::New(env, std::string("alltoallv: ") + which + " block " + std::to_string(j) + " (count " + std::to_string(counts[j]) + " at " + std::to_string(displs[j]) + ") is outside its array of " + std::to_string(length));
    }
  }
}

// alltoallv(comm, send, sendCounts, sendDispls, recv, recvCounts, recvDispls): counts and displacements in elements.
Napi::Value Alltoallv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = comm_arg(info, 0, "alltoallv");
  int size = 0;
  check(env, MPI_Comm_size(c, &size), "MPI_Comm_size");
  Buf s = buf_arg(info, 1, "alltoallv", "send");
  const int* sc = layout_arg(info, 2, "sendCounts", size);
  const int* sd = layout_arg(info, 3, "sendDispls", size);
  Buf r = buf_arg(info, 4, "alltoallv", "recv");
  const int* rc = layout_arg(info, 5, "recvCounts", size);
  const int* rd = layout_arg(info, 6, "recvDispls", size);
  if (s.kind != r.kind) throw Napi::TypeError::New(env, "alltoallv: send and recv must be typed arrays of the same type");
  check_layout(env, sc, sd, size, s.count, "send");
  check_layout(env, rc, rd, size, r.count, "recv");
  check(env, MPI_Alltoallv(s.data, sc, sd, s.type, r.data, rc, rd, r.type, c), "MPI_Alltoallv");
  return env.Undefined();
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "barrier");
  check(info.Env(), MPI_Barrier(c), "MPI_Barrier");
  return info.Env().Undefined();
}

// split(comm, color, key) → a new communicator handle, or -1 for a negative color (MPI_UNDEFINED: this rank joins none).
Napi::Value Split(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "split");
  int color = int_arg(info, 1, "split", "color", -1, INT_MAX);
  int key = int_arg(info, 2, "split", "key", INT_MIN, INT_MAX);
  MPI_Comm out;
  check(info.Env(), MPI_Comm_split(c, color < 0 ? MPI_UNDEFINED : color, key, &out), "MPI_Comm_split");
  if (out == MPI_COMM_NULL) return Napi::Number::New(info.Env(), -1);
  comms.push_back(out);
  return Napi::Number::New(info.Env(), static_cast<double>(comms.size() - 1));
}

// free(comm): releases a communicator made by split (not the world).
Napi::Value Free(const Napi::CallbackInfo& info) {
  comm_arg(info, 0, "free");
  size_t h = static_cast<size_t>(info[0].As<Napi::Number>().DoubleValue());
  if (h == 0) throw Napi::RangeError::New(info.Env(), "free: the world communicator cannot be freed");
  check(info.Env(), MPI_Comm_free(&comms[h]), "MPI_Comm_free");
  comms[h] = MPI_COMM_NULL;
  return info.Env().Undefined();
}

// abort(comm, code): stops every process of the job. Does not return.
Napi::Value Abort(const Napi::CallbackInfo& info) {
  MPI_Comm c = comm_arg(info, 0, "abort");
  int code = int_arg(info, 1, "abort", "code", 0, 255);
  MPI_Abort(c, code);
  return info.Env().Undefined();
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  require_ready(info.Env(), "finalize");
  for (auto& [id, p] : pending) MPI_Request_free(&p.request);
  pending.clear();
  for (size_t h = 1; h < comms.size(); h++) {
    if (comms[h] != MPI_COMM_NULL) MPI_Comm_free(&comms[h]);
  }
  comms.clear();
  check(info.Env(), MPI_Finalize(), "MPI_Finalize");
  return info.Env().Undefined();
}

Napi::Value Wtime(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), MPI_Wtime());
}

// The library's own version line ("Open MPI v4.1.4, …") and the host's processor name.
Napi::Value Library(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, static_cast<size_t>(len));
  size_t nl = v.find('\n');
  if (nl != std::string::npos) v.resize(nl);
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", v);
  int major = 0, minor = 0;
  MPI_Get_version(&major, &minor);
  o.Set("standard", std::to_string(major) + "." + std::to_string(minor));
  int init = 0;
  MPI_Initialized(&init);
  if (init) {
    char name[MPI_MAX_PROCESSOR_NAME];
    int n = 0;
    MPI_Get_processor_name(name, &n);
    o.Set("processor", std::string(name, static_cast<size_t>(n)));
  }
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("initThread", Napi::Function::New(env, InitThread));
  exports.Set("state", Napi::Function::New(env, State));
  exports.Set("rank", Napi::Function::New(env, Rank));
  exports.Set("size", Napi::Function::New(env, Size));
  exports.Set("allreduce", Napi::Function::New(env, Allreduce));
  exports.Set("iallreduce", Napi::Function::New(env, Iallreduce));
  exports.Set("test", Napi::Function::New(env, Test));
  exports.Set("wait", Napi::Function::New(env, Wait));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("allgather", Napi::Function::New(env, Allgather));
  exports.Set("alltoall", Napi::Function::New(env, Alltoall));
  exports.Set("alltoallv", Napi::Function::New(env, Alltoallv));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("split", Napi::Function::New(env, Split));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("abort", Napi::Function::New(env, Abort));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("wtime", Napi::Function::New(env, Wtime));
  exports.Set("library", Napi::Function::New(env, Library));
  return exports;
}

}  // namespace

NODE_API_MODULE(sigma_mpi, Init)
