#include "common/http_server.h"

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <type_traits>
#include <chrono>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "common/file_util.h"
#include "common/logging.h"

namespace tern::metrics {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

constexpr std::chrono::seconds kIoTimeout{10};
constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024;
constexpr const char* kMetricsContentType =
    "text/plain; version=0.0.4; charset=utf-8";

// Splits "host:port" / "[v6]:port"; the port must be 0..65535.
Status SplitHostPort(const std::string& address, std::string* host,
                     unsigned short* port) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("bind address '" + address +
                                "': expected host:port");
  }
  *host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  } else if (host->find(':') != std::string::npos) {
    return InvalidArgumentError("bind address '" + address +
                                "': write IPv6 hosts as [addr]:port");
  }
  if (host->empty()) *host = "0.0.0.0";
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port_text) > 65535) {
    return InvalidArgumentError("bind address '" + address + "': bad port '" +
                                port_text + "'");
  }
  *port = static_cast<unsigned short>(std::stoi(port_text));
  return OkStatus();
}

http::response<http::string_body> MakeResponse(int status,
                                               const std::string& content_type,
                                               std::string body) {
  http::response<http::string_body> response;
  response.result(static_cast<unsigned>(status));
  response.set(http::field::content_type, content_type);
  response.set(http::field::server, "tern");
  response.body() = std::move(body);
  return response;
}

// Maps a parsed request to its response: the built-in routes plus the
// handlers added with Handle().
class Router {
 public:
  explicit Router(const Registry* registry) : registry_(registry) {}

  void Handle(const std::string& path, MetricsHttpServer::Handler handler) {
    std::lock_guard<std::mutex> lock(mu_);
    handlers_[path] = std::move(handler);
  }

  void HandlePrefix(const std::string& prefix, MetricsHttpServer::RequestHandler handler) {
    std::lock_guard<std::mutex> lock(mu_);
    prefix_handlers_[prefix] = std::move(handler);
  }

  void RequireBearerToken(MetricsHttpServer::TokenCheck check) {
    std::lock_guard<std::mutex> lock(mu_);
    token_check_ = std::move(check);
  }

  http::response<http::string_body> Route(
      const http::request<http::string_body>& request) const {
    if (request.method() != http::verb::get) {
      auto response = MakeResponse(405, "text/plain; charset=utf-8",
                                   "method not allowed\n");
      response.set(http::field::allow, "GET");
      return response;
    }
    const beast::string_view target = request.target();
    const std::string path(target.substr(0, target.find('?')));
    MetricsHttpServer::Handler handler;
    MetricsHttpServer::RequestHandler prefix_handler;
    MetricsHttpServer::TokenCheck token_check;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = handlers_.find(path);
      if (it != handlers_.end()) {
        handler = it->second;
      } else if (path != "/metrics" && path != "/healthz") {  // built-ins win
        // The longest prefix first: std::map orders "/" before "/api/".
        for (auto p = prefix_handlers_.rbegin(); p != prefix_handlers_.rend(); ++p) {
          if (path.compare(0, p->first.size(), p->first) == 0) {
            prefix_handler = p->second;
            break;
          }
        }
      }
      token_check = token_check_;
    }
    if (token_check && path != "/healthz" && path != "/readyz" &&
        !Authorized(request, token_check)) {
      auto response = MakeResponse(401, "text/plain; charset=utf-8",
                                   "a bearer token is required\n");
      response.set(http::field::www_authenticate, "Bearer realm=\"tern\"");
      return response;
    }
    if (handler || prefix_handler) {
      try {
        MetricsHttpServer::Response r;
        if (handler) {
          r = handler();
        } else {
          MetricsHttpServer::Request parsed;
          parsed.path = path;
          const size_t question = target.find('?');
          if (question != beast::string_view::npos) {
            parsed.query = std::string(target.substr(question + 1));
          }
          auto auth = request.find(http::field::authorization);
          if (auth != request.end()) parsed.authorization = std::string(auth->value());
          r = prefix_handler(parsed);
        }
        auto response = MakeResponse(r.status, r.content_type, std::move(r.body));
        for (const auto& [name, value] : r.headers) response.set(name, value);
        return response;
      } catch (const std::exception& e) {
        TERN_LOG(ERROR) << "metrics http: handler for " << path
                        << " threw: " << e.what();
        return MakeResponse(500, "text/plain; charset=utf-8",
                            "internal error\n");
      }
    }
    if (path == "/metrics") {
      return MakeResponse(200, kMetricsContentType, registry_->Serialize());
    }
    if (path == "/healthz") {
      return MakeResponse(200, "text/plain; charset=utf-8", "ok");
    }
    return MakeResponse(404, "text/plain; charset=utf-8", "not found\n");
  }

 private:
  static bool Authorized(const http::request<http::string_body>& request,
                         const MetricsHttpServer::TokenCheck& check) {
    auto it = request.find(http::field::authorization);
    if (it == request.end()) return false;
    const beast::string_view value = it->value();
    constexpr beast::string_view kScheme = "Bearer ";
    if (value.size() <= kScheme.size() ||
        !beast::iequals(value.substr(0, kScheme.size()), kScheme)) {
      return false;
    }
    const beast::string_view token = value.substr(kScheme.size());
    return check(std::string_view(token.data(), token.size()));
  }

  const Registry* const registry_;
  mutable std::mutex mu_;
  std::map<std::string, MetricsHttpServer::Handler> handlers_;
  std::map<std::string, MetricsHttpServer::RequestHandler> prefix_handlers_;
  MetricsHttpServer::TokenCheck token_check_;  // empty: no token needed
};

using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// One connection: read a request, write the response, repeat while the
// client keeps the connection alive. Owned by its pending async operation.
// Stream: beast::tcp_stream (HTTP) or TlsStream (HTTPS, handshake first).
template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(tcp::socket socket, const Router* router)
      : stream_(std::move(socket)), router_(router) {}
  Session(tcp::socket socket, asio::ssl::context& tls, const Router* router)
      : stream_(std::move(socket), tls), router_(router) {}

  void Start() {
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      beast::get_lowest_layer(stream_).expires_after(kIoTimeout);
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) {
                                  TERN_LOG(DEBUG) << "metrics https: handshake: " << ec.message();
                                  return self->Close();
                                }
                                self->Read();
                              });
    } else {
      Read();
    }
  }

 private:
  void Read() {
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    parser_->body_limit(kMaxBodyBytes);
    beast::get_lowest_layer(stream_).expires_after(kIoTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       self->OnRead(ec);
                     });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream) return Close();
    if (ec) {
      // Malformed request, oversized header, timeout, reset: drop only this
      // connection.
      if (ec != beast::error::timeout && ec != asio::error::operation_aborted) {
        TERN_LOG(DEBUG) << "metrics http: closing connection: " << ec.message();
      }
      return Close();
    }
    const http::request<http::string_body>& request = parser_->get();
    response_ = router_->Route(request);
    response_.version(request.version());
    response_.keep_alive(request.keep_alive());
    response_.prepare_payload();
    beast::get_lowest_layer(stream_).expires_after(kIoTimeout);
    http::async_write(stream_, response_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                        self->OnWrite(ec);
                      });
  }

  void OnWrite(beast::error_code ec) {
    if (ec || !response_.keep_alive()) return Close();
    Read();
  }

  // Closes the socket (over TLS without close_notify: every response is
  // length-delimited, so a client cannot mistake a cut for an end).
  void Close() {
    beast::error_code ignored;
    tcp::socket& socket = beast::get_lowest_layer(stream_).socket();
    socket.shutdown(tcp::socket::shutdown_send, ignored);
    socket.close(ignored);
  }

  Stream stream_;
  const Router* const router_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
};

// A server TLS context from PEM files; INVALID_ARGUMENT naming the file.
StatusOr<std::shared_ptr<asio::ssl::context>> MakeTlsContext(const std::string& cert_file,
                                                             const std::string& key_file) {
  auto tls = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  beast::error_code ec;
  tls->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use,
                   ec);
  if (tls->use_certificate_chain_file(cert_file, ec)) {
    return InvalidArgumentError("metrics TLS certificate " + cert_file + ": " + ec.message());
  }
  if (tls->use_private_key_file(key_file, asio::ssl::context::pem, ec) &&
      ERR_GET_REASON(static_cast<unsigned long>(ec.value())) != X509_R_KEY_VALUES_MISMATCH) {
    return InvalidArgumentError("metrics TLS key " + key_file + ": " + ec.message());
  }
  if (ec || SSL_CTX_check_private_key(tls->native_handle()) != 1) {
    return InvalidArgumentError("metrics TLS key " + key_file + " is not the private key of " +
                                cert_file);
  }
  return tls;
}

}  // namespace

class MetricsHttpServer::Impl {
 public:
  Impl(std::string bind_address, const Registry* registry)
      : bind_address_(std::move(bind_address)), router_(registry) {}

  Status Start();
  void Stop();
  int port() const { return port_.load(); }
  void Handle(const std::string& path, Handler handler) {
    router_.Handle(path, std::move(handler));
  }
  void HandlePrefix(const std::string& prefix, RequestHandler handler) {
    router_.HandlePrefix(prefix, std::move(handler));
  }
  void RequireBearerToken(TokenCheck check) { router_.RequireBearerToken(std::move(check)); }

  Status UseTls(const std::string& cert_file, const std::string& key_file) {
    std::lock_guard<std::mutex> lock(lifecycle_mu_);
    if (io_) return FailedPreconditionError("metrics http: UseTls() after Start()");
    TERN_ASSIGN_OR_RETURN(tls_, MakeTlsContext(cert_file, key_file));
    cert_file_ = cert_file;
    key_file_ = key_file;
    tls_stamp_ = FileChangeStamp(cert_file) + "|" + FileChangeStamp(key_file);
    next_tls_check_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    return OkStatus();
  }

 private:
  void Accept();

  // The TLS context for a new connection (null: plain HTTP), reloaded when
  // the files changed. On the server's thread only.
  std::shared_ptr<asio::ssl::context> CurrentTls() {
    if (tls_ == nullptr) return nullptr;
    const auto now = std::chrono::steady_clock::now();
    if (now < next_tls_check_) return tls_;
    next_tls_check_ = now + std::chrono::seconds(1);
    const std::string stamp = FileChangeStamp(cert_file_) + "|" + FileChangeStamp(key_file_);
    if (stamp == tls_stamp_) return tls_;
    tls_stamp_ = stamp;
    StatusOr<std::shared_ptr<asio::ssl::context>> reloaded = MakeTlsContext(cert_file_, key_file_);
    if (reloaded.ok()) {
      tls_ = *std::move(reloaded);
      TERN_LOG(INFO) << "metrics https: certificate " << cert_file_ << " re-read";
    } else {
      TERN_LOG(ERROR) << "metrics https: keeping the previous certificate: "
                      << reloaded.status();
    }
    return tls_;
  }

  const std::string bind_address_;
  Router router_;
  // Set by UseTls() before Start(); then the server thread's.
  std::shared_ptr<asio::ssl::context> tls_;
  std::string cert_file_, key_file_, tls_stamp_;
  std::chrono::steady_clock::time_point next_tls_check_;
  std::atomic<int> port_{0};

  std::mutex lifecycle_mu_;  // Serializes Start() and Stop().
  // Created by Start(), destroyed by Stop(); destroying the io_context closes
  // every connection (sessions are owned by their pending handlers).
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<asio::steady_timer> retry_timer_;
  std::thread thread_;
};

Status MetricsHttpServer::Impl::Start() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (io_) return FailedPreconditionError("metrics http: already started");

  std::string host;
  unsigned short port = 0;
  TERN_RETURN_IF_ERROR(SplitHostPort(bind_address_, &host, &port));

  auto io = std::make_unique<asio::io_context>(1);
  beast::error_code ec;
  tcp::endpoint endpoint;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(ip, port);
  } else {
    tcp::resolver resolver(*io);
    auto results = resolver.resolve(host, std::to_string(port),
                                    tcp::resolver::passive, ec);
    if (ec || results.empty()) {
      return InvalidArgumentError("bind address '" + bind_address_ +
                                  "': cannot resolve '" + host +
                                  "': " + (ec ? ec.message() : "no address"));
    }
    endpoint = results.begin()->endpoint();
  }

  auto acceptor = std::make_unique<tcp::acceptor>(*io);
  const auto fail = [&](const char* what) {
    return UnavailableError("metrics http: " + std::string(what) + " " +
                            bind_address_ + ": " + ec.message());
  };
  if (acceptor->open(endpoint.protocol(), ec)) return fail("open");
  // Lets a restarted daemon bind while old connections sit in TIME_WAIT; on
  // Linux it does not allow two listeners on one port.
  if (acceptor->set_option(asio::socket_base::reuse_address(true), ec)) {
    return fail("setsockopt");
  }
  if (acceptor->bind(endpoint, ec)) return fail("bind");
  if (acceptor->listen(asio::socket_base::max_listen_connections, ec)) {
    return fail("listen");
  }
  const tcp::endpoint local = acceptor->local_endpoint(ec);
  if (ec) return fail("getsockname");

  io_ = std::move(io);
  acceptor_ = std::move(acceptor);
  retry_timer_ = std::make_unique<asio::steady_timer>(*io_);
  port_ = local.port();
  Accept();
  thread_ = std::thread([io = io_.get()] {
    for (;;) {
      try {
        io->run();
        return;
      } catch (const std::exception& e) {
        TERN_LOG(ERROR) << "metrics http: " << e.what();
      }
    }
  });
  return OkStatus();
}

void MetricsHttpServer::Impl::Accept() {
  acceptor_->async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      // E.g. out of file descriptors: wait a little instead of spinning.
      TERN_LOG(WARNING) << "metrics http: accept: " << ec.message();
      retry_timer_->expires_after(std::chrono::milliseconds(100));
      retry_timer_->async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec) Accept();
      });
      return;
    }
    std::shared_ptr<asio::ssl::context> tls = CurrentTls();
    if (tls != nullptr) {
      std::make_shared<Session<TlsStream>>(std::move(socket), *tls, &router_)->Start();
    } else {
      std::make_shared<Session<beast::tcp_stream>>(std::move(socket), &router_)->Start();
    }
    Accept();
  });
}

void MetricsHttpServer::Impl::Stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (!io_) return;
  io_->stop();
  thread_.join();
  // Destroys the pending handlers, and with them every session and socket.
  retry_timer_.reset();
  acceptor_.reset();
  io_.reset();
  port_ = 0;
}

MetricsHttpServer::MetricsHttpServer(std::string bind_address,
                                     const Registry* registry)
    : impl_(std::make_unique<Impl>(std::move(bind_address), registry)) {
  TERN_CHECK(registry != nullptr);
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

Status MetricsHttpServer::Start() { return impl_->Start(); }
void MetricsHttpServer::Stop() { impl_->Stop(); }
int MetricsHttpServer::port() const { return impl_->port(); }
void MetricsHttpServer::Handle(const std::string& path, Handler handler) {
  impl_->Handle(path, std::move(handler));
}

void MetricsHttpServer::HandlePrefix(const std::string& prefix, RequestHandler handler) {
  impl_->HandlePrefix(prefix, std::move(handler));
}
void MetricsHttpServer::RequireBearerToken(TokenCheck check) {
  impl_->RequireBearerToken(std::move(check));
}
Status MetricsHttpServer::UseTls(const std::string& cert_file, const std::string& key_file) {
  return impl_->UseTls(cert_file, key_file);
}

}  // namespace tern::metrics
