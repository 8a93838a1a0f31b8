// MB_HOST_DEVICE marks functions that nvcc compiles for both the host and the
// GPU (the index math and the element conversions the CUDA kernels share with
// the CPU path); for the C++ compiler it expands to nothing.
#pragma once

#if defined(__CUDACC__)
#define MB_HOST_DEVICE __host__ __device__
#else
#define MB_HOST_DEVICE
#endif
