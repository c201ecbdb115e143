/* The native step driver, linked into every kernel library (codegen/build.py): runs a "program", an array of
 * kernel calls over pre-built argument arrays, in one call from Python (runtime/program.py).
 *
 * Valid C and C++ (TVM links the library with g++). Only TVM-FFI's C API is used. On an error the failing call's
 * index is returned and the error stays raised in this thread's TVM-FFI slot, where the caller reads it
 * (runtime/ffi.py, TVMFFIErrorMoveFromRaised).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#endif
#include <stdint.h>
#include <time.h>
#include <tvm/ffi/c_api.h>

/* One kernel call: the kernel (a TVM-FFI function handle) and its arguments. */
typedef struct {
  TVMFFIObjectHandle func;
  TVMFFIAny* args;
  int64_t num_args;
} GraphllmCall;

static double graphllm_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#ifdef __cplusplus
extern "C" {
#endif

/* Run calls[0..n) in order; with `seconds` (else NULL) add each call's wall time to seconds[i].
 * Returns n when all ran, else the index of the call that failed. */
TVM_FFI_DLL_EXPORT int64_t graphllm_run_program(const GraphllmCall* calls, int64_t n, double* seconds) {
  for (int64_t i = 0; i < n; ++i) {
    TVMFFIAny result;
    result.type_index = kTVMFFINone;
    result.zero_padding = 0;
    result.v_int64 = 0;
    double start = seconds ? graphllm_now() : 0.0;
    if (TVMFFIFunctionCall(calls[i].func, calls[i].args, (int32_t)calls[i].num_args, &result) != 0) return i;
    if (seconds) seconds[i] += graphllm_now() - start;
    if (result.type_index >= kTVMFFIStaticObjectBegin) TVMFFIObjectDecRef(result.v_obj);
  }
  return n;
}

#ifdef __cplusplus
}
#endif
