// The contract between a fuzz target and the two ways it is run.
//
// A target (one *_fuzz.cc file) defines the libFuzzer entry point
//   extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// which must return 0 for every input, valid or not: bad bytes are a Status,
// never a crash, a hang, an exception or a sanitizer report. Properties are
// checked with TERN_CHECK (an abort is a finding). It also defines
//   std::vector<std::string> TernFuzzSeeds();
// a few valid inputs built in code (no binary files in the tree) that the
// mutations start from. Inputs that once failed are kept, named after what
// they found, in fuzz/regressions/<target>/; ctest runs them too.
//
// Built by default, a target links fuzz_main.cc: a deterministic mutation
// driver that ctest runs (label `fuzz`), under scripts/sanitize.sh with
// ASan+UBSan. Configured with -DTERN_LIBFUZZER=ON and clang, it links
// libFuzzer instead (scripts/fuzz.sh), and `--write-seeds DIR` of the
// default build gives libFuzzer its starting corpus.
#ifndef TERN_FUZZ_FUZZ_TARGET_H_
#define TERN_FUZZ_FUZZ_TARGET_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

std::vector<std::string> TernFuzzSeeds();

namespace tern::fuzz {

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace tern::fuzz

#endif  // TERN_FUZZ_FUZZ_TARGET_H_
