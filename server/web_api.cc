#include "server/web_api.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli/inspect.h"
#include "common/utf8.h"
#include "web/web_assets.h"

namespace tern::server {
namespace {

using Response = metrics::MetricsHttpServer::Response;
using Request = metrics::MetricsHttpServer::Request;

constexpr auto kCallDeadline = std::chrono::seconds(30);
constexpr char kApiPrefix[] = "/api/v1/";

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (const unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          static const char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void AddCommonHeaders(Response* response) {
  response->headers.emplace_back("Cache-Control", "no-store");
  response->headers.emplace_back("X-Content-Type-Options", "nosniff");
}

Response JsonResponse(int status, std::string body) {
  Response response;
  response.status = status;
  response.content_type = "application/json";
  response.body = std::move(body);
  AddCommonHeaders(&response);
  return response;
}

Response ErrorResponse(int status, const std::string& code, const std::string& message) {
  Response response = JsonResponse(status, "{\"error\":{\"code\":" + JsonString(code) +
                                               ",\"message\":" + JsonString(message) + "}}\n");
  if (status == 401) response.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"tern\"");
  return response;
}

Response BadParameter(const std::string& name, const std::string& why) {
  return ErrorResponse(400, "INVALID_ARGUMENT", "query parameter " + name + ": " + why);
}

// `job_id` set: a job's route, where another owner's job answers exactly as
// an absent one does (no existence leak).
Response FromGrpcStatus(const grpc::Status& status, const std::string* job_id = nullptr) {
  if (job_id != nullptr && (status.error_code() == grpc::StatusCode::NOT_FOUND ||
                            status.error_code() == grpc::StatusCode::PERMISSION_DENIED)) {
    return ErrorResponse(404, "NOT_FOUND", "job " + *job_id + " not found");
  }
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return ErrorResponse(400, "INVALID_ARGUMENT", status.error_message());
    case grpc::StatusCode::UNAUTHENTICATED:
      return ErrorResponse(401, "UNAUTHENTICATED", status.error_message());
    case grpc::StatusCode::PERMISSION_DENIED:
      return ErrorResponse(403, "PERMISSION_DENIED", status.error_message());
    case grpc::StatusCode::NOT_FOUND:
      return ErrorResponse(404, "NOT_FOUND", status.error_message());
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ALREADY_EXISTS:
      return ErrorResponse(409, "FAILED_PRECONDITION", status.error_message());
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return ErrorResponse(429, "RESOURCE_EXHAUSTED", status.error_message());
    case grpc::StatusCode::UNAVAILABLE:
      return ErrorResponse(503, "UNAVAILABLE", status.error_message());
    default:
      return ErrorResponse(500, "INTERNAL", status.error_message());
  }
}

StatusOr<std::string> ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  const auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) return InternalError("JSON printing failed: " + status.ToString());
  return out;
}

Response MessageResponse(const google::protobuf::Message& message) {
  StatusOr<std::string> json = ToJson(message);
  if (!json.ok()) return ErrorResponse(500, "INTERNAL", json.status().message());
  return JsonResponse(200, *json + "\n");
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes a query component ('+' is a space); false when malformed.
bool PercentDecode(const std::string& text, std::string* out) {
  out->clear();
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      *out += ' ';
    } else if (text[i] == '%') {
      if (i + 2 >= text.size()) return false;
      const int high = HexValue(text[i + 1]), low = HexValue(text[i + 2]);
      if (high < 0 || low < 0) return false;
      *out += static_cast<char>(high * 16 + low);
      i += 2;
    } else {
      *out += text[i];
    }
  }
  return true;
}

using Query = std::vector<std::pair<std::string, std::string>>;

// Splits "a=1&b=2"; a malformed escape is a 400 naming the parameter.
bool ParseQuery(const std::string& text, Query* query, Response* error) {
  size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    size_t end = text.find('&', start);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(start, end - start);
    if (!part.empty()) {
      const size_t eq = part.find('=');
      std::string name, value;
      const std::string raw_name = part.substr(0, eq);
      if (!PercentDecode(raw_name, &name)) {
        *error = BadParameter(raw_name, "malformed percent-encoding");
        return false;
      }
      if (!PercentDecode(eq == std::string::npos ? "" : part.substr(eq + 1), &value)) {
        *error = BadParameter(name, "malformed percent-encoding");
        return false;
      }
      if (!IsValidUtf8(name)) {
        *error = BadParameter(ToValidUtf8(name), "the name is not valid UTF-8");
        return false;
      }
      if (!IsValidUtf8(value)) {
        *error = BadParameter(name, "the value is not valid UTF-8");
        return false;
      }
      query->emplace_back(std::move(name), std::move(value));
    }
    start = end + 1;
  }
  return true;
}

// Only the named parameters are allowed; the first other one is a 400.
bool OnlyKnown(const Query& query, const std::vector<std::string>& known, Response* error) {
  for (const auto& [name, value] : query) {
    bool found = false;
    for (const auto& k : known) found = found || name == k;
    if (!found) {
      std::string allowed;
      for (const auto& k : known) allowed += (allowed.empty() ? "" : ", ") + k;
      *error =
          BadParameter(name, "unknown (allowed: " + (allowed.empty() ? "none" : allowed) + ")");
      return false;
    }
  }
  return true;
}

bool ParseUnsigned(const std::string& text, uint64_t max, uint64_t* value) {
  if (text.empty() || text.size() > 19 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  *value = std::stoull(text);
  return *value <= max;
}

void PrepareContext(const Request& request, grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  if (!request.authorization.empty()) context->AddMetadata("authorization", request.authorization);
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool PrintableAscii(const std::string& text) {
  for (const unsigned char c : text) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// `ternctl inspect` of an artifact's bytes: {"fileName", "text" (the
// command's output), "summary" (its --json output)}.
Response Inspect(const std::string& file_name, const std::string& data) {
  std::error_code ec;
  std::string pattern =
      (std::filesystem::temp_directory_path(ec) / "ternd-inspect-XXXXXX").string();
  const int fd = mkstemp(pattern.data());
  if (fd < 0) return ErrorResponse(500, "INTERNAL", "cannot create a temporary file to inspect");
  const bool written = WriteAll(fd, data);
  close(fd);
  std::ostringstream text, summary, err;
  const int text_rc = written ? cli::InspectArtifactCommand(pattern, false, text, err) : 1;
  const int json_rc = written ? cli::InspectArtifactCommand(pattern, true, summary, err) : 1;
  std::filesystem::remove(pattern, ec);
  if (!written || text_rc != 0 || json_rc != 0) {
    return ErrorResponse(500, "INTERNAL", "the artifact cannot be inspected: " + err.str());
  }
  std::string shown = text.str();
  for (size_t at = shown.find(pattern); at != std::string::npos; at = shown.find(pattern, at)) {
    shown.replace(at, pattern.size(), file_name);
  }
  nlohmann::json parsed = nlohmann::json::parse(summary.str(), nullptr, false);
  if (parsed.is_object()) parsed["path"] = file_name;
  nlohmann::json body = {{"fileName", file_name}, {"text", shown}, {"summary", parsed}};
  return JsonResponse(200, body.dump() + "\n");
}

}  // namespace

WebApi::WebApi(std::shared_ptr<grpc::Channel> channel)
    : stub_(v1::JobService::NewStub(std::move(channel))) {}

void WebApi::InstallOn(metrics::MetricsHttpServer* http) const {
  http->HandlePrefix("/api/", [this](const Request& request) { return ServeApi(request); });
  http->HandlePrefix("/", [](const Request& request) { return ServeStatic(request); });
  http->Handle("/metrics", [] {
    Response response;
    response.status = 404;
    response.body = "not found (the metrics are on ternd --metrics-listen)\n";
    return response;
  });
}

Response WebApi::ServeStatic(const Request& request) {
  const std::string path = request.path == "/" ? "/index.html" : request.path;
  const web::Asset* asset = web::FindAsset(path.substr(1));
  if (asset == nullptr) {
    Response response;
    response.status = 404;
    response.body = "not found\n";
    return response;
  }
  Response response;
  response.content_type = std::string(asset->content_type);
  response.body = std::string(asset->data);
  response.headers.emplace_back("X-Content-Type-Options", "nosniff");
  response.headers.emplace_back("X-Frame-Options", "DENY");
  response.headers.emplace_back("Referrer-Policy", "no-referrer");
  response.headers.emplace_back(
      "Content-Security-Policy",
      "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
      "frame-ancestors 'none'");
  response.headers.emplace_back("Cache-Control", "no-cache");
  return response;
}

Response WebApi::ServeApi(const Request& request) const {
  if (!PrintableAscii(request.authorization)) {
    return ErrorResponse(401, "UNAUTHENTICATED", "authorization: expected \"Bearer <token>\"");
  }
  if (request.path.compare(0, sizeof(kApiPrefix) - 1, kApiPrefix) != 0) {
    return ErrorResponse(404, "NOT_FOUND", "no such API path (the API is under /api/v1/)");
  }
  std::vector<std::string> parts;
  {
    const std::string rest = request.path.substr(sizeof(kApiPrefix) - 1);
    size_t start = 0;
    while (true) {
      const size_t slash = rest.find('/', start);
      parts.push_back(rest.substr(start, slash == std::string::npos ? slash : slash - start));
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
  }
  Query query;
  Response error;
  if (!ParseQuery(request.query, &query, &error)) return error;
  grpc::ClientContext context;
  PrepareContext(request, &context);

  if (parts.size() == 1 && parts[0] == "whoami") {
    if (!OnlyKnown(query, {}, &error)) return error;
    v1::WhoAmIResponse response;
    const grpc::Status status = stub_->WhoAmI(&context, v1::WhoAmIRequest(), &response);
    return status.ok() ? MessageResponse(response) : FromGrpcStatus(status);
  }
  if (parts.size() == 1 && parts[0] == "agents") {
    if (!OnlyKnown(query, {}, &error)) return error;
    v1::ListAgentsResponse response;
    const grpc::Status status = stub_->ListAgents(&context, v1::ListAgentsRequest(), &response);
    return status.ok() ? MessageResponse(response) : FromGrpcStatus(status);
  }
  if (parts.size() == 1 && parts[0] == "jobs") {
    if (!OnlyKnown(query, {"state", "owner", "label", "page_size", "page_token"}, &error)) {
      return error;
    }
    v1::ListJobsRequest list;
    for (const auto& [name, value] : query) {
      if (name == "state") {
        v1::JobState state;
        std::string upper;
        for (const char c : value)
          upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (upper.rfind("JOB_STATE_", 0) != 0) upper = "JOB_STATE_" + upper;
        if (!v1::JobState_Parse(upper, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
          return BadParameter(
              "state", "unknown job state \"" + value + "\" (e.g. QUEUED, RUNNING, SUCCEEDED)");
        }
        list.add_states(state);
      } else if (name == "owner") {
        list.set_owner(value);
      } else if (name == "label") {
        const size_t eq = value.find('=');
        if (eq == std::string::npos || eq == 0) {
          return BadParameter("label", "expected KEY=VALUE, got \"" + value + "\"");
        }
        (*list.mutable_labels())[value.substr(0, eq)] = value.substr(eq + 1);
      } else if (name == "page_size") {
        uint64_t size = 0;
        if (!ParseUnsigned(value, 1000, &size)) {
          return BadParameter("page_size",
                              "expected an integer in [0, 1000], got \"" + value + "\"");
        }
        list.set_page_size(static_cast<int32_t>(size));
      } else if (name == "page_token") {
        list.set_page_token(value);
      }
    }
    v1::ListJobsResponse response;
    const grpc::Status status = stub_->ListJobs(&context, list, &response);
    return status.ok() ? MessageResponse(response) : FromGrpcStatus(status);
  }
  if (parts.size() >= 2 && parts.size() <= 3 && parts[0] == "jobs" && !parts[1].empty()) {
    const std::string& job_id = parts[1];
    if (parts.size() == 2) {
      if (!OnlyKnown(query, {}, &error)) return error;
      v1::GetJobRequest get;
      get.set_job_id(job_id);
      v1::Job job;
      const grpc::Status status = stub_->GetJob(&context, get, &job);
      return status.ok() ? MessageResponse(job) : FromGrpcStatus(status, &job_id);
    }
    if (parts[2] == "events") {
      if (!OnlyKnown(query, {"after"}, &error)) return error;
      uint64_t after = 0;
      for (const auto& [name, value] : query) {
        if (!ParseUnsigned(value, (uint64_t{1} << 62), &after)) {
          return BadParameter("after",
                              "expected a sequence number (a non-negative integer), "
                              "got \"" +
                                  value + "\"");
        }
      }
      v1::WatchJobRequest watch;
      watch.set_job_id(job_id);
      watch.set_from_sequence(after + 1);
      watch.set_history_only(true);
      std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = stub_->WatchJob(&context, watch);
      std::string body = "{\"events\":[";
      v1::JobEvent event;
      int count = 0;
      bool more = false;
      while (reader->Read(&event)) {
        if (count == kMaxEventsPerPage) {
          more = true;
          context.TryCancel();
          break;
        }
        StatusOr<std::string> json = ToJson(event);
        if (!json.ok()) return ErrorResponse(500, "INTERNAL", json.status().message());
        body += (count++ == 0 ? "" : ",") + *json;
      }
      const grpc::Status status = reader->Finish();
      if (!more && !status.ok()) return FromGrpcStatus(status, &job_id);
      return JsonResponse(200, body + "],\"more\":" + (more ? "true" : "false") + "}\n");
    }
    if (parts[2] == "artifact" || parts[2] == "inspect") {
      if (!OnlyKnown(query, {}, &error)) return error;
      v1::GetArtifactRequest get;
      get.set_job_id(job_id);
      std::unique_ptr<grpc::ClientReader<v1::GetArtifactResponse>> reader =
          stub_->GetArtifact(&context, get);
      v1::GetArtifactResponse chunk;
      std::string file_name = "job-" + job_id + ".tern";
      std::string data;
      while (reader->Read(&chunk)) {
        if (chunk.has_header()) file_name = chunk.header().file_name();
        if (chunk.has_chunk()) data += chunk.chunk().data();
      }
      const grpc::Status status = reader->Finish();
      if (!status.ok()) return FromGrpcStatus(status, &job_id);
      std::string safe_name;
      for (const char c : file_name) {
        safe_name +=
            (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') ? c
                                                                                              : '_';
      }
      if (parts[2] == "inspect") return Inspect(safe_name, data);
      Response response;
      response.content_type = "application/octet-stream";
      response.body = std::move(data);
      AddCommonHeaders(&response);
      response.headers.emplace_back("Content-Disposition",
                                    "attachment; filename=\"" + safe_name + "\"");
      return response;
    }
  }
  return ErrorResponse(404, "NOT_FOUND", "no such API path: " + request.path);
}

}  // namespace tern::server
