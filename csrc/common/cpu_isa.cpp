// Picks the CPU instruction set the kernels run (see cpu_isa.h).
#include "common/cpu_isa.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace fastlayers::cpu_isa {
namespace {

Choice resolve() {
  Choice c{Isa::scalar, nullptr, {true, false, false}};
#ifdef FL_X86_ISA
  // libgcc's __builtin_cpu_supports reports AVX/AVX-512 features only when the OS saves their registers (it reads
  // XCR0 with xgetbv), so "supported" here means usable. The AVX-512 unit is compiled for F+BW+VL+DQ (Skylake-SP
  // and later, Zen 4): a CPU with AVX-512F alone (Xeon Phi) takes the AVX2 path.
  __builtin_cpu_init();
  c.supported[int(Isa::avx2)] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  c.supported[int(Isa::avx512)] = c.supported[int(Isa::avx2)] && __builtin_cpu_supports("avx512f") &&
                                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                  __builtin_cpu_supports("avx512dq");
#endif
  // Test hook: pretend the CPU lacks AVX-512 (and AVX2 with "avx2"), to exercise the unsupported-value error.
  if (const char* hide = std::getenv("FASTLAYERS_CPU_ISA_TEST_HIDE")) {
    if (!std::strcmp(hide, "avx512") || !std::strcmp(hide, "avx2")) c.supported[int(Isa::avx512)] = false;
    if (!std::strcmp(hide, "avx2")) c.supported[int(Isa::avx2)] = false;
  }
  c.isa = c.supported[int(Isa::avx512)] ? Isa::avx512 : c.supported[int(Isa::avx2)] ? Isa::avx2 : Isa::scalar;
  const char* want = std::getenv("FASTLAYERS_CPU_ISA");
  if (want == nullptr || want[0] == '\0') return c;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar}) {
    if (std::strcmp(want, name(isa)) != 0) continue;
    if (c.supported[int(isa)]) {
      c.isa = isa;
    } else {
      c.error = "unsupported";
    }
    return c;
  }
  c.error = "unknown";
  return c;
}

}  // namespace

const Choice& choice() {
  static const Choice c = resolve();
  return c;
}

const char* name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "scalar";
  }
}

}  // namespace fastlayers::cpu_isa
