// The client-side --tls-* flags, the same in ternctl and tern-agent (CLI11).
#ifndef TERN_AUTH_TLS_FLAGS_H_
#define TERN_AUTH_TLS_FLAGS_H_

#include <CLI/CLI.hpp>

#include "auth/tls_credentials.h"

namespace tern::tls {

// --tls, --tls-ca, --tls-cert, --tls-key (also from $TERN_TLS, $TERN_AUTH_CA,
// $TERN_AUTH_CERT, $TERN_AUTH_KEY) and --tls-server-name, bound to `options`.
inline void AddClientTlsFlags(CLI::App& app, ClientTlsOptions* options) {
  app.add_flag("--tls", options->tls, "connect to ternd with TLS, trusting the system's CAs")
      ->envname("TERN_TLS");
  app.add_option("--tls-ca", options->ca_file, "PEM CA bundle ternd's certificate must chain to")
      ->envname("TERN_AUTH_CA");
  app.add_option("--tls-cert", options->cert_file,
                 "PEM client certificate, for a ternd that requires one (mutual TLS)")
      ->envname("TERN_AUTH_CERT");
  app.add_option("--tls-key", options->key_file, "PEM private key of --tls-cert")
      ->envname("TERN_AUTH_KEY");
  app.add_option("--tls-server-name", options->server_name,
                 "name to check ternd's certificate against (default: the --server host)");
  app.add_option("--token-file", options->token_file,
                 "file holding a bearer token (ternctl token new) sent with every call; needs TLS")
      ->envname("TERN_TOKEN_FILE");
}

}  // namespace tern::tls

#endif  // TERN_AUTH_TLS_FLAGS_H_
