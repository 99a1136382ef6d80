// The Python module fastlayers._C_aten: the kernels that need more of ATen than the stable ABI offers (GEMMs
// called inside parallel regions: hyper, align; every CUDA kernel: streams, guards, sort/searchsorted). It is
// compiled against one torch and loads only under that torch's minor release; the ops it implements are defined
// by fastlayers._C. This module only exposes its own output pool (each library holds one).
#include <Python.h>

#include "common/cpu_cache_py.h"

static PyMethodDef methods[] = {FL_CPU_CACHE_METHODS, {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_aten", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C_aten(void) { return PyModule_Create(&module_def); }
