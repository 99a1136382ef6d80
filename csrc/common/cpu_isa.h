// One CPU instruction-set choice for every vectorised kernel, made once per process.
//
// Each family's hot loops live in a kernel header (e.g. eca/eca_kernels.h) that three small translation units
// compile, each under its own `#pragma GCC target` and namespace: <family>_avx512.cpp, <family>_avx2.cpp and
// <family>_scalar.cpp (baseline x86-64, i.e. SSE2, or whatever the target's baseline is elsewhere). Each TU fills
// a table of function pointers; the op code calls through the table picked here (FL_ISA_SELECT). Those TUs
// include every torch/STL/project header BEFORE their pragma, so inline functions and templates shared with
// other TUs are compiled for the baseline only: the linker can never keep an AVX-512 copy of a shared inline
// function (tests/test_cpu_isa.py checks the objects with objdump). Only code defined after the pragma, inside
// the per-ISA namespace, gets the wider instructions; always_inline helpers inlined into it do too.
//
// FASTLAYERS_CPU_ISA=avx512|avx2|scalar forces a path (tests run each one on one machine). A value that is unknown
// or that this CPU cannot run is not an error here (no throwing from static initialisers or kernels): the best
// supported path is used, and `import fastlayers` raises with the details (fastlayers/_compat.py, cpu_isa_info).
#pragma once

#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FL_X86_ISA 1  // the AVX-512 and AVX2 translation units are compiled (GCC on x86-64)
#endif

namespace fastlayers::cpu_isa {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct Choice {
  Isa isa;            // the path every kernel runs
  const char* error;  // nullptr, or why FASTLAYERS_CPU_ISA could not be honoured (import raises it)
  bool supported[3];  // indexed by Isa
};

// Resolved on first use (CPU features and the environment variable), then fixed for the process.
const Choice& choice();
inline Isa active() { return choice().isa; }
const char* name(Isa isa);

// One family's kernels for both float types: what each of its _avx512 / _avx2 / _scalar TUs defines.
template <template <typename> class Kernels>
struct Table {
  Kernels<float> f;
  Kernels<double> d;
};

}  // namespace fastlayers::cpu_isa

namespace fastlayers {
// A parameter of type same<T> does not take part in deduction: in the forwarding functions over a family's
// table, the pointer argument named first fixes T and the others convert to it.
template <typename T>
using same = std::type_identity_t<T>;
}  // namespace fastlayers

// Declares the three tables of a family (defined by its _avx512 / _avx2 / _scalar TUs) ...
#ifdef FL_X86_ISA
#define FL_ISA_DECLARE(Table, getter)     \
  namespace avx512 {                      \
  const Table& getter();                  \
  }                                       \
  namespace avx2 {                        \
  const Table& getter();                  \
  }                                       \
  namespace scalar {                      \
  const Table& getter();                  \
  }
// ... and picks the one for the active ISA.
#define FL_ISA_SELECT(getter)                                                                     \
  (::fastlayers::cpu_isa::active() == ::fastlayers::cpu_isa::Isa::avx512 ? avx512::getter()       \
   : ::fastlayers::cpu_isa::active() == ::fastlayers::cpu_isa::Isa::avx2 ? avx2::getter()         \
                                                                           : scalar::getter())
#else
#define FL_ISA_DECLARE(Table, getter) \
  namespace scalar {                  \
  const Table& getter();              \
  }
#define FL_ISA_SELECT(getter) (scalar::getter())
#endif

// In a family's <family>_isa.h, after its `template <typename T> struct Kernels`: the family's Table, the three
// tables' declarations and kernels<T>(), the active path's kernels for T (selected on first use).
#define FL_ISA_KERNELS(Kernels)                                   \
  using Table = ::fastlayers::cpu_isa::Table<Kernels>;            \
  FL_ISA_DECLARE(Table, table)                                    \
  template <typename T>                                           \
  const Kernels<T>& kernels() {                                   \
    static const Table& t = FL_ISA_SELECT(table);                 \
    if constexpr (sizeof(T) == 4) {                               \
      return t.f;                                                 \
    } else {                                                      \
      return t.d;                                                 \
    }                                                             \
  }
