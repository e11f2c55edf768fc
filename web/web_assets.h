// The web console's static files (web/src, and uPlot in web/vendor),
// embedded in the binary at build time by embed_assets.cmake: no Node.js and
// no files on disk at run time.
// Thread-safe: constant data.
#ifndef TERN_WEB_WEB_ASSETS_H_
#define TERN_WEB_WEB_ASSETS_H_

#include <string_view>

namespace tern::web {

struct Asset {
  std::string_view path;          // e.g. "index.html", "vendor/uPlot.esm.js"
  std::string_view content_type;  // from the extension
  std::string_view data;
};

// The file at `path` (relative, no leading '/'); nullptr when none.
const Asset* FindAsset(std::string_view path);

}  // namespace tern::web

#endif  // TERN_WEB_WEB_ASSETS_H_
