#include "server/server_version.h"

#include "tern_version.h"  // generated: cmake/TernVersion.cmake

namespace tern::server {

const char* ServerVersion() { return TERN_VERSION; }

}  // namespace tern::server
