// The Python module fastlayers._C. Ops are reached through torch.ops.fastlayers (registered in ops.cpp and the
// per-family files); this module only reports how the library was built, without pulling in pybind11.
#include <Python.h>

#include "common/cpu_cache.h"

#ifndef FASTLAYERS_CUDA_ARCH_LIST
#define FASTLAYERS_CUDA_ARCH_LIST ""
#endif

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
  return Py_BuildValue("{s:O,s:s,s:O,s:s}", "cuda", cuda, "cuda_arch_list", FASTLAYERS_CUDA_ARCH_LIST, "openmp",
                       openmp, "compiler", __VERSION__);
}

static PyObject* cpu_cache_stats(PyObject*, PyObject*) {
  const auto s = fastlayers::cpu_cache::stats();
  return Py_BuildValue("{s:K,s:K,s:K,s:K}", "cached_bytes", (unsigned long long)s.cached_bytes, "limit_bytes",
                       (unsigned long long)s.limit_bytes, "hits", (unsigned long long)s.hits, "misses",
                       (unsigned long long)s.misses);
}

static PyObject* cpu_cache_set_limit(PyObject*, PyObject* arg) {
  const unsigned long long bytes = PyLong_AsUnsignedLongLong(arg);
  if (PyErr_Occurred()) return nullptr;
  fastlayers::cpu_cache::set_limit(size_t(bytes));
  Py_RETURN_NONE;
}

static PyObject* cpu_cache_empty(PyObject*, PyObject*) {
  fastlayers::cpu_cache::empty();
  Py_RETURN_NONE;
}

static PyObject* set_poison(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  fastlayers::cpu_cache::set_poison(on != 0);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_poison", set_poison, METH_O, "Test aid: fill every CPU output with NaN bytes before kernels write it."},
    {"cpu_cache_stats", cpu_cache_stats, METH_NOARGS, "Pool of large CPU outputs: cached bytes, limit, hits."},
    {"cpu_cache_set_limit", cpu_cache_set_limit, METH_O, "Set the pool's limit in bytes (0 disables it)."},
    {"cpu_cache_empty", cpu_cache_empty, METH_NOARGS, "Return every pooled block to the system."},
    {"build_info", build_info, METH_NOARGS, "How fastlayers._C was compiled: CUDA, arch list, OpenMP, compiler."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
