# tern_find_torch(): finds LibTorch in the calling directory only.
#
# ARCHITECTURE.md: no target links both LibTorch and protobuf/gRPC, and every
# torch-using target lives in a directory that calls this. Sets TERN_CUDA when
# the LibTorch found was built with CUDA (the GPU machine); otherwise the CPU
# build (Debian's libtorch-dev 1.13 with c10d Gloo) is used.
macro(tern_find_torch)
  find_package(Torch REQUIRED)
  # Torch's headers are third-party: include them as SYSTEM so -Wall -Wextra
  # only applies to our code.
  get_target_property(_tern_torch_inc torch INTERFACE_INCLUDE_DIRECTORIES)
  if(_tern_torch_inc)
    set_target_properties(torch PROPERTIES INTERFACE_SYSTEM_INCLUDE_DIRECTORIES
                                           "${_tern_torch_inc}")
  endif()
  if(TORCH_CUDA_LIBRARIES OR CUDA_FOUND)
    set(TERN_CUDA ON)
  else()
    set(TERN_CUDA OFF)
  endif()
endmacro()
