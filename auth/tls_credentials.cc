#include "auth/tls_credentials.h"

#include <grpc/grpc.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/channel_arguments.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>

#include "auth/bearer_token.h"
#include "common/file_util.h"

namespace tern::tls {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The file named by `flag`; NOT_FOUND / UNAVAILABLE name both.
StatusOr<std::string> ReadPemFile(const std::string& flag, const std::string& path) {
  StatusOr<std::string> pem = ReadFileToString(path);
  if (!pem.ok()) return Status(pem.status().code(), flag + ": " + pem.status().message());
  if (pem->size() > (1 << 20)) {
    return InvalidArgumentError(flag + ": " + path + " is over 1 MiB, not a PEM file");
  }
  return pem;
}

// One or more PEM certificates, every one parsed; the first is returned.
StatusOr<std::unique_ptr<X509, X509Free>> ParseCertificates(const std::string& flag,
                                                             const std::string& path,
                                                             const std::string& pem) {
  auto bio = MemoryBio(pem);
  std::unique_ptr<X509, X509Free> first;
  int count = 0;
  while (true) {
    std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    if (first == nullptr) first = std::move(cert);
    ++count;
  }
  ERR_clear_error();  // the loop ends on "no start line"
  if (count == 0) {
    return InvalidArgumentError(flag + ": " + path + " holds no PEM certificate");
  }
  return first;
}

StatusOr<std::unique_ptr<EVP_PKEY, KeyFree>> ParseKey(const std::string& flag,
                                                      const std::string& path,
                                                      const std::string& pem) {
  auto bio = MemoryBio(pem);
  // A null password callback that fails: an encrypted key is an error, not a
  // prompt on the terminal.
  std::unique_ptr<EVP_PKEY, KeyFree> key(PEM_read_bio_PrivateKey(
      bio.get(), nullptr, [](char*, int, int, void*) { return -1; }, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return InvalidArgumentError(flag + ": " + path +
                                " holds no unencrypted PEM private key");
  }
  return key;
}

// A certificate and its key, checked to belong together.
Status LoadPair(const std::string& cert_flag, const std::string& cert_file,
                const std::string& key_flag, const std::string& key_file,
                grpc::SslServerCredentialsOptions::PemKeyCertPair* pair) {
  if (cert_file.empty() != key_file.empty()) {
    return InvalidArgumentError(cert_flag + " and " + key_flag + " go together: give both");
  }
  TERN_ASSIGN_OR_RETURN(pair->cert_chain, ReadPemFile(cert_flag, cert_file));
  TERN_ASSIGN_OR_RETURN(pair->private_key, ReadPemFile(key_flag, key_file));
  TERN_ASSIGN_OR_RETURN(auto cert, ParseCertificates(cert_flag, cert_file, pair->cert_chain));
  TERN_ASSIGN_OR_RETURN(auto key, ParseKey(key_flag, key_file, pair->private_key));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError(key_flag + ": " + key_file + " is not the private key of " +
                                cert_flag + " " + cert_file);
  }
  return OkStatus();
}

StatusOr<std::string> LoadCaBundle(const std::string& flag, const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string pem, ReadPemFile(flag, path));
  TERN_RETURN_IF_ERROR(ParseCertificates(flag, path, pem).status());
  return pem;
}

}  // namespace

StatusOr<std::string> CertificateCommonName(const std::string& flag,
                                            const std::string& cert_file) {
  TERN_ASSIGN_OR_RETURN(const std::string pem, ReadPemFile(flag, cert_file));
  TERN_ASSIGN_OR_RETURN(auto cert, ParseCertificates(flag, cert_file, pem));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  const int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) return std::string();
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     static_cast<size_t>(ASN1_STRING_length(data)));
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options) {
  if (!options.enabled()) return grpc::InsecureServerCredentials();
  if (options.cert_file.empty()) {
    return InvalidArgumentError("--tls-cert and --tls-key are needed for TLS" +
                                std::string(options.client_ca_file.empty()
                                                ? ""
                                                : " (--tls-client-ca only adds client checks)"));
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  TERN_RETURN_IF_ERROR(
      LoadPair("--tls-cert", options.cert_file, "--tls-key", options.key_file, &pair));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  const bool mutual = !options.client_ca_file.empty();
  if (mutual) {
    TERN_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                          LoadCaBundle("--tls-client-ca", options.client_ca_file));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  if (options.reload_interval_s == 0) return grpc::SslServerCredentials(ssl);
  // The same files, watched: gRPC re-reads them every interval and serves
  // what it last read successfully.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, mutual ? options.client_ca_file : "",
      options.reload_interval_s);
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (mutual) {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

namespace {

// The channel credentials of MakeChannel, before a bearer token is added.
StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args) {
  if (!options.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!options.ca_file.empty()) {
    TERN_ASSIGN_OR_RETURN(ssl.pem_root_certs, LoadCaBundle("--tls-ca", options.ca_file));
  }
  if (!options.cert_file.empty() || !options.key_file.empty()) {
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    TERN_RETURN_IF_ERROR(
        LoadPair("--tls-cert", options.cert_file, "--tls-key", options.key_file, &pair));
    ssl.pem_cert_chain = std::move(pair.cert_chain);
    ssl.pem_private_key = std::move(pair.private_key);
  }
  if (!options.server_name.empty()) args->SetSslTargetNameOverride(options.server_name);
  if (options.reload_interval_s == 0 || options.ca_file.empty()) return grpc::SslCredentials(ssl);
  // Watched files; ternd's certificate is checked against the CA bundle and
  // its name (the address's host, or server_name), as SslCredentials does.
  const bool mutual = !options.cert_file.empty();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      mutual ? options.key_file : "", mutual ? options.cert_file : "", options.ca_file,
      options.reload_interval_s);
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_root_certs();
  if (mutual) tls.watch_identity_key_cert_pairs();
  tls.set_verify_server_certs(true);
  tls.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  return grpc::experimental::TlsCredentials(tls);
}

}  // namespace

StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                     const ClientTlsOptions& options,
                                                     const std::string& service_config_json) {
  grpc::ChannelArguments args;
  if (!service_config_json.empty()) args.SetServiceConfigJSON(service_config_json);
  // gRPC's default reconnect backoff grows to 2 minutes, so a client would
  // notice a restarted ternd long after it is back (an agent: after its
  // lease has run out). Retry the connection at least every 2 s instead.
  // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at its default: it is also the
  // shortest time a connection attempt may take, and a loaded server needs
  // more than a few hundred ms for the handshake.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                        ChannelCredentials(options, &args));
  if (!options.token_file.empty()) {
    if (!options.enabled()) {
      return InvalidArgumentError(
          "--token-file needs TLS (--tls or --tls-ca): a bearer token must not cross the "
          "network in plaintext");
    }
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::CallCredentials> token,
                          BearerTokenCredentials("--token-file", options.token_file));
    credentials = grpc::CompositeChannelCredentials(credentials, token);
  }
  return grpc::CreateCustomChannel(target, credentials, args);
}

}  // namespace tern::tls
