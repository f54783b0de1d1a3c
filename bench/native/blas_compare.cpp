// Sigma's GEMM against OpenBLAS's sgemm, interleaved in one process.
//
// Built and run by `npm run bench -- blas` (bench/blas.ts) from the addon's
// kernel sources and the system's libopenblas; not part of the addon.
//
// For each shape and thread count, every round runs the FMA-peak probe, then
// times our product and OpenBLAS's (the median of a few back-to-back calls
// each, the first library alternating between rounds), so that a neighbour
// slowing the host slows both. Each result is checked against the other
// before any timing. Prints one JSON object per line.
//
// usage: blas_compare ROUNDS THREADS [--tuning=T] M:N:K:TB ...
// --tuning sets the addon's tuned choice here too, so that this program times
// what the addon runs (without it, the cache-size rule: the addon's choice
// when it has no tuning). T is the tuning flattened by bench/blas.ts:
//   PATH|ONE|MANY, each of ONE and MANY being LARGE,SHORTK,NT,NN with
//   LARGE and SHORTK as TILE:MC:KC:NC.
// SIGMA_KERNEL_PATH holds the kernels at a path as it does the addon's.
// The first line printed is the GEMM configuration in use for each printed
// shape's K, {"config": {...}}.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cpu.h"
#include "gemm.h"
#include "threadpool.h"

// The two OpenBLAS entry points used, declared here so that no CBLAS header is needed.
extern "C" void cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
extern "C" void openblas_set_num_threads(int n);

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

double peak_flops(int threads) {
  const int64_t iters = 20000000;
  double best = 0;
  for (int i = 0; i < 3; ++i)
    best = std::max(best, double(sigma::kFmaPeakFlopsPerIter) * iters * threads / sigma::fma_peak_seconds(iters, threads));
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ROUNDS THREADS M:N:K:TB ...\n", argv[0]);
    return 2;
  }
  const int rounds = std::atoi(argv[1]), threads = std::atoi(argv[2]);
  // The addon's kernel path ceiling (SIGMA_KERNEL_PATH, as src/backend/native/index.ts reads it), so that
  // an AVX2 comparison on an AVX-512 machine times our AVX2 kernels.
  if (const char* kp = std::getenv("SIGMA_KERNEL_PATH")) {
    const std::string k = kp;
    if (k == "avx2-fma") sigma::set_kernel_path(sigma::KernelPath::kAvx2);
    else if (k == "portable") sigma::set_kernel_path(sigma::KernelPath::kPortable);
  }
  sigma::set_num_threads(threads);
  openblas_set_num_threads(threads);
  int first = 3;
  if (argc > 3 && std::string(argv[3]).rfind("--tuning=", 0) == 0) {
    char path[32], t[8][64];
    long long b[8][3], rows[4];
    const int n = std::sscanf(argv[3] + 9,
                              "%31[^|]|%63[^:]:%lld:%lld:%lld,%63[^:]:%lld:%lld:%lld,%lld,%lld|"
                              "%63[^:]:%lld:%lld:%lld,%63[^:]:%lld:%lld:%lld,%lld,%lld",
                              path, t[0], &b[0][0], &b[0][1], &b[0][2], t[1], &b[1][0], &b[1][1], &b[1][2], &rows[0],
                              &rows[1], t[2], &b[2][0], &b[2][1], &b[2][2], t[3], &b[3][0], &b[3][1], &b[3][2], &rows[2],
                              &rows[3]);
    if (n != 21) {
      std::fprintf(stderr, "bad %s (want --tuning=PATH|LARGE,SHORTK,NT,NN|LARGE,SHORTK,NT,NN)\n", argv[3]);
      return 2;
    }
    auto choice = [&](int i) { return sigma::GemmChoice{t[i], sigma::GemmBlocking{b[i][0], b[i][1], b[i][2]}}; };
    sigma::GemmTuning tuning;
    tuning.path = path;
    tuning.one = sigma::GemmTunedThreads{choice(0), choice(1), rows[0], rows[1]};
    tuning.many = sigma::GemmTunedThreads{choice(2), choice(3), rows[2], rows[3]};
    std::string error;
    if (!sigma::set_gemm_tuning(&tuning, &error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      return 2;
    }
    first = 4;
  }
  for (int s = first; s < argc; ++s) {
    long long M, N, K;
    int tb;
    if (std::sscanf(argv[s], "%lld:%lld:%lld:%d", &M, &N, &K, &tb) != 4) continue;  // reported below
    const sigma::GemmSettings g = sigma::gemm_settings(K, threads);
    std::printf("{\"config\":{\"K\":%lld,\"tile\":\"%s\",\"mr\":%d,\"nr\":%d,\"mc\":%lld,\"kc\":%lld,\"nc\":%lld,\"tuned\":%s}}\n",
                K, g.tile.c_str(), g.mr, g.nr, (long long)g.blocking.mc, (long long)g.blocking.kc, (long long)g.blocking.nc,
                g.tuned ? "true" : "false");
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int s = first; s < argc; ++s) {
    long long M, N, K;
    int tb;
    if (std::sscanf(argv[s], "%lld:%lld:%lld:%d", &M, &N, &K, &tb) != 4) {
      std::fprintf(stderr, "bad shape %s (want M:N:K:TB)\n", argv[s]);
      return 2;
    }
    std::vector<float> a(M * K), b(K * N), c1(M * N), c2(M * N);
    for (auto& v : a) v = u(rng);
    for (auto& v : b) v = u(rng);
    const int64_t ldb = tb ? K : N;
    auto ours = [&] { sigma::sgemm(false, tb, M, N, K, a.data(), K, b.data(), ldb, c1.data(), N, false); };
    auto blas = [&] {
      cblas_sgemm(kRowMajor, kNoTrans, tb ? kTrans : kNoTrans, int(M), int(N), int(K), 1.f, a.data(), int(K), b.data(),
                  int(ldb), 0.f, c2.data(), int(N));
    };
    ours();
    blas();
    double err = 0;
    for (size_t i = 0; i < c1.size(); ++i) err = std::max(err, double(std::fabs(c1[i] - c2[i])));
    if (err > 1e-4 * std::sqrt(double(K)) * 4) {
      std::fprintf(stderr, "%lldx%lldx%lld tb=%d: our result differs from OpenBLAS's by %g\n", M, N, K, tb, err);
      return 1;
    }
    const double flops = 2.0 * M * N * K;
    std::vector<double> ours_r, blas_r, speed;
    // Back-to-back calls per measurement (their median), enough for ~20 ms.
    const int reps = int(std::min(15.0, std::max(1.0, std::ceil(2e9 / flops))));
    auto time = [&](auto&& f) {
      std::vector<double> ts;
      for (int i = 0; i < reps; ++i) {
        const double t0 = now();
        f();
        ts.push_back(now() - t0);
      }
      return median(ts);
    };
    for (int r = 0; r < rounds; ++r) {
      const double p = peak_flops(threads);
      // Alternate which library runs first after the probe.
      double to, tb_;
      if (r % 2 == 0) to = time(ours), tb_ = time(blas);
      else tb_ = time(blas), to = time(ours);
      ours_r.push_back(flops / to / p);
      blas_r.push_back(flops / tb_ / p);
      speed.push_back(tb_ / to);
    }
    std::printf("{\"M\":%lld,\"N\":%lld,\"K\":%lld,\"tb\":%d,\"threads\":%d,\"ours\":%.4f,\"openblas\":%.4f,\"speed\":%.4f}\n", M,
                N, K, tb, threads, median(ours_r), median(blas_r), median(speed));
    std::fflush(stdout);
  }
  return 0;
}
