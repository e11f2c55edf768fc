// The version of this ternd, as WhoAmI reports it (server_version): the
// project version of CMakeLists.txt, then `git describe --always --dirty
// --tags` in parentheses when the source tree was a git checkout at build
// time (cmake/TernVersion.cmake refreshes it at every build), e.g.
// "0.1.0 (v0.1.0-3-gabc1234-dirty)"; "0.1.0" from a source tarball.
#ifndef TERN_SERVER_SERVER_VERSION_H_
#define TERN_SERVER_SERVER_VERSION_H_

namespace tern::server {

const char* ServerVersion();

}  // namespace tern::server

#endif  // TERN_SERVER_SERVER_VERSION_H_
