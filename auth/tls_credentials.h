// TLS for tern's gRPC connections (ternctl and tern-agent to ternd): gRPC
// credentials built from PEM files, checked before any socket opens, so a
// wrong path, a file that is not PEM or a key that does not belong to its
// certificate is a clear INVALID_ARGUMENT / NOT_FOUND naming the flag,
// not a handshake failure later.
//
//   ternd      --tls-cert server.pem --tls-key server.key [--tls-client-ca ca.pem]
//   ternctl    --tls-ca ca.pem [--tls-cert client.pem --tls-key client.key]
//   tern-agent --tls-ca ca.pem [--tls-cert agent.pem --tls-key agent.key]
//
// With --tls-client-ca, ternd requires and verifies a client certificate
// (mutual TLS): only holders of a certificate signed by that CA can submit
// jobs or register as agents. Without any --tls-* flag everything stays
// plaintext, as before (loopback and tests).
#ifndef TERN_AUTH_TLS_CREDENTIALS_H_
#define TERN_AUTH_TLS_CREDENTIALS_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "common/status.h"

namespace tern::tls {

// ternd's side. cert_file and key_file: its certificate (chain) and private
// key; both or neither. client_ca_file: CA bundle that client certificates
// must chain to (mutual TLS); needs cert_file.
struct ServerTlsOptions {
  std::string cert_file, key_file, client_ca_file;
  // The files are read again every this many seconds (gRPC's file watcher),
  // so a renewed certificate (cert-manager, certbot) is served without a
  // restart; they are checked as above once, at start-up. Replace a file
  // by renaming a complete new one over it. 0: read once.
  unsigned int reload_interval_s = 60;
  bool enabled() const { return !cert_file.empty() || !key_file.empty() || !client_ca_file.empty(); }
};

// A client's side. TLS when `tls` is set or any file is given. ca_file: the
// roots ternd's certificate must chain to (empty: the system's roots).
// cert_file and key_file: a client certificate for mutual TLS (both or
// neither). server_name: the name to check ternd's certificate against when
// it differs from the host in the address (e.g. an IP address).
struct ClientTlsOptions {
  bool tls = false;
  std::string ca_file, cert_file, key_file, server_name;
  // A bearer token file (bearer_token.h) sent with every call; needs TLS.
  std::string token_file = "";
  // With ca_file: the files are re-read every this many seconds, as on the
  // server (a long-running tern-agent keeps working across a renewal of its
  // certificate or of the CA bundle); 0: read once (ternctl).
  unsigned int reload_interval_s = 60;
  bool enabled() const {
    return tls || !ca_file.empty() || !cert_file.empty() || !key_file.empty() ||
           !server_name.empty();
  }
};

// The common name of the first certificate in the PEM file `cert_file`
// (`flag` words the errors); "" when it has none.
StatusOr<std::string> CertificateCommonName(const std::string& flag,
                                            const std::string& cert_file);

// Insecure credentials when !options.enabled().
StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options);

// A channel to `target` ("host:port") with the options' credentials, and
// the bearer token of token_file on every call (INVALID_ARGUMENT without TLS:
// a token must not cross the network in plaintext). A lost connection is
// retried at least every 2 s (not gRPC's default, up to 2 minutes).
// `service_config_json`: a gRPC service config for the channel (e.g. the
// retry policy tern/v1/service_config.h), "" for none.
StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                     const ClientTlsOptions& options,
                                                     const std::string& service_config_json = "");

}  // namespace tern::tls

#endif  // TERN_AUTH_TLS_CREDENTIALS_H_
