# tern_target_warnings(<target>): -Wall -Wextra on our own code only, so that
# third-party headers (LibTorch, gRPC) included as SYSTEM stay quiet.
function(tern_target_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(TERN_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
