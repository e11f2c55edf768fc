// `ternctl inspect FILE.tern`: what a `.tern` artifact holds, read locally
// (no server, no LibTorch): the model it rebuilds, how it was trained (the
// artifact's metadata), its ternary and float tensors, the bits per weight,
// and its size against the same model in float32. The file is read with
// quant::ReadArtifactFile, which checks every length, code and the checksum:
// a damaged or truncated file is reported as such (exit 5), a missing one as
// NOT_FOUND (exit 3).
#ifndef TERN_CLI_INSPECT_H_
#define TERN_CLI_INSPECT_H_

#include <ostream>
#include <string>

namespace tern::cli {

// Prints the summary and one row per tensor (`json`: one JSON object
// instead). Returns a ternctl exit code.
int InspectArtifactCommand(const std::string& path, bool json, std::ostream& out,
                           std::ostream& err);

}  // namespace tern::cli

#endif  // TERN_CLI_INSPECT_H_
