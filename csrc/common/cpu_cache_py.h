// The Python functions over one library's output pool (common/cpu_cache.h). fastlayers._C and _C_aten each hold
// a pool and each module exposes these; fastlayers/cpu_cache.py drives both.
#pragma once
#include <Python.h>

#include "common/cpu_cache.h"

namespace fastlayers::cpu_cache_py {

inline PyObject* cpu_cache_stats(PyObject*, PyObject*) {
  const auto s = fastlayers::cpu_cache::stats();
  return Py_BuildValue("{s:K,s:K,s:K,s:K}", "cached_bytes", (unsigned long long)s.cached_bytes, "limit_bytes",
                       (unsigned long long)s.limit_bytes, "hits", (unsigned long long)s.hits, "misses",
                       (unsigned long long)s.misses);
}

inline PyObject* cpu_cache_set_limit(PyObject*, PyObject* arg) {
  const unsigned long long bytes = PyLong_AsUnsignedLongLong(arg);
  if (PyErr_Occurred()) return nullptr;
  fastlayers::cpu_cache::set_limit(size_t(bytes));
  Py_RETURN_NONE;
}

inline PyObject* cpu_cache_empty(PyObject*, PyObject*) {
  fastlayers::cpu_cache::empty();
  Py_RETURN_NONE;
}

inline PyObject* set_poison(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  fastlayers::cpu_cache::set_poison(on != 0);
  Py_RETURN_NONE;
}

}  // namespace fastlayers::cpu_cache_py

// The PyMethodDef entries of the functions above, for a module's method table.
#define FL_CPU_CACHE_METHODS                                                                                  \
  {"set_poison", fastlayers::cpu_cache_py::set_poison, METH_O,                                                \
   "Test aid: fill every CPU output with NaN bytes before kernels write it."},                               \
      {"cpu_cache_stats", fastlayers::cpu_cache_py::cpu_cache_stats, METH_NOARGS,                             \
       "Pool of large CPU outputs: cached bytes, limit, hits."},                                             \
      {"cpu_cache_set_limit", fastlayers::cpu_cache_py::cpu_cache_set_limit, METH_O,                          \
       "Set the pool's limit in bytes (0 disables it)."},                                                    \
      {"cpu_cache_empty", fastlayers::cpu_cache_py::cpu_cache_empty, METH_NOARGS,                             \
       "Return every pooled block to the system."}
