// The Python module fastlayers._C (the stable-ABI library). Ops are reached through torch.ops.fastlayers
// (registered in ops.cpp and the per-family files); this module only reports how the library was built and
// controls its output pool, without pulling in pybind11.
#include <Python.h>

#include <cstdlib>
#include <initializer_list>

#include "common/cpu_cache_py.h"
#include "common/cpu_isa.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

// The instruction set every CPU kernel runs (common/cpu_isa.h), what this CPU supports, and whether
// FASTLAYERS_CPU_ISA asked for something else; fastlayers/_compat.py raises at import when it could not be honoured.
static PyObject* cpu_isa_info(PyObject*, PyObject*) {
  using namespace fastlayers::cpu_isa;
  const Choice& c = choice();
  PyObject* supported = PyList_New(0);
  if (supported == nullptr) return nullptr;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar}) {
    if (!c.supported[int(isa)]) continue;
    PyObject* s = PyUnicode_FromString(name(isa));
    if (s == nullptr || PyList_Append(supported, s) < 0) {
      Py_XDECREF(s);
      Py_DECREF(supported);
      return nullptr;
    }
    Py_DECREF(s);
  }
  const char* requested = std::getenv("FASTLAYERS_CPU_ISA");
  return Py_BuildValue("{s:s,s:N,s:z,s:z,s:s}", "isa", name(c.isa), "supported", supported, "requested",
                       (requested && requested[0]) ? requested : nullptr, "error", c.error, "valid",
                       "avx512, avx2, scalar");
}

static PyObject* build_info(PyObject*, PyObject*) {
#ifdef FASTLAYERS_WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
#ifdef _OPENMP
  PyObject* openmp = Py_True;
#else
  PyObject* openmp = Py_False;
#endif
  // The arch list lives in _build_config.json, not here: as a macro it would enter every unit's flags, and a new
  // list would recompile the C++ sources too, not just the CUDA ones.
  return Py_BuildValue("{s:O,s:O,s:s,s:s}", "cuda", cuda, "openmp", openmp, "compiler", __VERSION__, "cpu_isa",
                       fastlayers::cpu_isa::name(fastlayers::cpu_isa::active()));
}

// Asks the kernel to back [address, address + nbytes) with transparent huge pages (the 2 MiB-aligned part of it).
// For large tables read at random rows (the N-cache) a 4 KiB page costs a TLB miss on nearly every access. Returns
// whether the advice was taken; a kernel without THP, or another OS, just says False.
static PyObject* advise_huge_pages(PyObject*, PyObject* args) {
  unsigned long long address = 0, nbytes = 0;
  if (!PyArg_ParseTuple(args, "KK", &address, &nbytes)) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr unsigned long long kHuge = 2ull << 20;
  const unsigned long long begin = (address + kHuge - 1) / kHuge * kHuge, end = (address + nbytes) / kHuge * kHuge;
  if (end > begin && madvise(reinterpret_cast<void*>(begin), size_t(end - begin), MADV_HUGEPAGE) == 0) Py_RETURN_TRUE;
#endif
  Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"advise_huge_pages", advise_huge_pages, METH_VARARGS,
     "advise_huge_pages(address, nbytes): back the 2 MiB-aligned part of a CPU buffer with huge pages."},
    FL_CPU_CACHE_METHODS,
    {"cpu_isa_info", cpu_isa_info, METH_NOARGS,
     "CPU kernels' instruction set: the one in use, those this CPU supports, FASTLAYERS_CPU_ISA and its error."},
    {"build_info", build_info, METH_NOARGS, "How fastlayers._C was compiled: CUDA, OpenMP, compiler."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
