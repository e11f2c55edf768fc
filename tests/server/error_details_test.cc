// Errors as data over real gRPC loopback (AIP-193, AIP-211): the
// grpc-status-details-bin trailer ternd sends, decoded as a client would,
// carries the reason, the violated fields, quota failures and retry delays;
// unknown spec fields are refused; another owner's job looks absent.
#include <google/protobuf/any.pb.h>
#include <google/protobuf/empty.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/error_reasons.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "tests/server/test_util.h"

namespace tern::server {
namespace {

using testing::SetDeadline;
using testing::ValidSpec;

// What a client decodes from a failed call's details.
struct Decoded {
  google::rpc::Status status;
  bool has_info = false;
  google::rpc::ErrorInfo info;
  std::vector<std::pair<std::string, std::string>> fields;  // BadRequest
  std::vector<std::pair<std::string, std::string>> quota;   // QuotaFailure
  bool has_retry = false;
  google::rpc::RetryInfo retry;
};

Decoded Decode(const grpc::Status& status) {
  Decoded d;
  EXPECT_FALSE(status.error_details().empty()) << "no grpc-status-details-bin";
  EXPECT_TRUE(d.status.ParseFromString(status.error_details()));
  EXPECT_EQ(d.status.code(), static_cast<int>(status.error_code()));
  EXPECT_EQ(d.status.message(), status.error_message());
  for (const google::protobuf::Any& any : d.status.details()) {
    google::rpc::BadRequest bad;
    google::rpc::QuotaFailure quota;
    if (any.Is<google::rpc::ErrorInfo>() && any.UnpackTo(&d.info)) {
      d.has_info = true;
    } else if (any.Is<google::rpc::BadRequest>() && any.UnpackTo(&bad)) {
      for (const auto& v : bad.field_violations())
        d.fields.emplace_back(v.field(), v.description());
    } else if (any.Is<google::rpc::QuotaFailure>() && any.UnpackTo(&quota)) {
      for (const auto& v : quota.violations()) d.quota.emplace_back(v.subject(), v.description());
    } else if (any.Is<google::rpc::RetryInfo>() && any.UnpackTo(&d.retry)) {
      d.has_retry = true;
    }
  }
  EXPECT_TRUE(d.has_info) << "no ErrorInfo";
  EXPECT_EQ(d.info.domain(), "tern.v1");
  return d;
}

bool HasField(const Decoded& d, const std::string& field, const std::string& description_part) {
  for (const auto& [f, description] : d.fields) {
    if (f == field && description.find(description_part) != std::string::npos) return true;
  }
  return false;
}

std::string Fields(const Decoded& d) {
  std::string out;
  for (const auto& [f, description] : d.fields) out += f + ": " + description + "\n";
  return out;
}

class ErrorDetailsTest : public testing::TerndTest {
 protected:
  grpc::Status SubmitRequest(const v1::SubmitJobRequest& request, const std::string& owner = "") {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (!owner.empty()) ctx.AddMetadata("x-tern-owner", owner);
    v1::SubmitJobResponse response;
    return jobs_->SubmitJob(&ctx, request, &response);
  }
  int JobCount() {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ListJobsResponse response;
    EXPECT_TRUE(jobs_->ListJobs(&ctx, v1::ListJobsRequest(), &response).ok());
    return response.jobs_size();
  }
};

TEST_F(ErrorDetailsTest, AnInvalidSpecNamesEveryFieldInBadRequest) {
  v1::JobSpec spec = ValidSpec();
  spec.mutable_optimization()->set_epochs(0);
  spec.mutable_model()->set_arch("resnet9000");
  v1::SubmitJobResponse response;
  const grpc::Status status = Submit(spec, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kSpecInvalid);
  EXPECT_TRUE(HasField(d, "spec.optimization.epochs", "must be > 0")) << Fields(d);
  EXPECT_TRUE(HasField(d, "spec.model.arch", "resnet9000")) << Fields(d);
  EXPECT_EQ(d.fields.size(), 2u) << Fields(d);
  // The human message stays the joined text.
  EXPECT_NE(status.error_message().find("spec.optimization.epochs: must be > 0"),
            std::string::npos);
  EXPECT_NE(status.error_message().find("; "), std::string::npos);
}

TEST_F(ErrorDetailsTest, ABadIdempotencyKeyAndAReusedOneHaveTheirReasons) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = ValidSpec();
  request.set_idempotency_key(std::string(200, 'k'));
  Decoded d = Decode(SubmitRequest(request));
  EXPECT_EQ(d.info.reason(), error_reason::kIdempotencyKeyInvalid);
  EXPECT_TRUE(HasField(d, "idempotency_key", "printable ASCII")) << Fields(d);

  request.set_idempotency_key("key-1");
  ASSERT_TRUE(SubmitRequest(request).ok());
  request.mutable_spec()->set_name("another-name");
  const grpc::Status reused = SubmitRequest(request);
  ASSERT_EQ(reused.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  d = Decode(reused);
  EXPECT_EQ(d.info.reason(), error_reason::kIdempotencyKeyReused);
  EXPECT_EQ(d.info.metadata().at("job_id"), "1");
}

TEST_F(ErrorDetailsTest, ManyViolationsStayUnderTheMetadataLimit) {
  v1::JobSpec spec = ValidSpec();
  const std::string big(1024, 'x');  // 200 labels, each key too long: 201 violations or more
  spec.mutable_model()->set_arch(big);
  for (int i = 0; i < 200; ++i) (*spec.mutable_labels())["K" + std::to_string(i) + big] = "v";
  v1::SubmitJobResponse response;
  const grpc::Status status = Submit(spec, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_LE(status.error_message().size(), 2048u);
  EXPECT_LE(status.error_details().size(), 2048u + 2048u + 64u);
  const Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kSpecInvalid);
  EXPECT_FALSE(d.fields.empty());
  ASSERT_EQ(d.info.metadata().count("field_violations_omitted"), 1u);
  EXPECT_GE(d.fields.size() + std::stoul(d.info.metadata().at("field_violations_omitted")), 201u);
  for (const auto& [field, description] : d.fields) EXPECT_LE(field.size(), 256u);
}

// A newer client's field: built on the client as an unknown field, so the
// bytes on the wire carry field numbers this ternd's JobSpec does not have.
TEST_F(ErrorDetailsTest, UnknownSpecFieldsAreRefusedWithTheirPath) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = ValidSpec();
  request.mutable_spec()
      ->GetReflection()
      ->MutableUnknownFields(request.mutable_spec())
      ->AddVarint(998, 1);
  v1::OptimizationSpec* optimization = request.mutable_spec()->mutable_optimization();
  optimization->GetReflection()->MutableUnknownFields(optimization)->AddVarint(99, 7);
  optimization->GetReflection()->MutableUnknownFields(optimization)->AddVarint(99, 8);
  optimization->GetReflection()
      ->MutableUnknownFields(optimization)
      ->AddLengthDelimited(100, "newer");
  // Serialized, the request still parses as the old message: the field is
  // really on the wire.
  v1::SubmitJobRequest reparsed;
  ASSERT_TRUE(reparsed.ParseFromString(request.SerializeAsString()));
  ASSERT_EQ(reparsed.spec()
                .optimization()
                .GetReflection()
                ->GetUnknownFields(reparsed.spec().optimization())
                .field_count(),
            3);

  const grpc::Status status = SubmitRequest(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  const Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kSpecUnknownField);
  EXPECT_TRUE(HasField(d, "spec", "unknown field number 998")) << Fields(d);
  EXPECT_TRUE(HasField(d, "spec.optimization", "unknown field number 99")) << Fields(d);
  EXPECT_TRUE(HasField(d, "spec.optimization", "unknown field number 100")) << Fields(d);
  EXPECT_EQ(d.fields.size(), 3u) << Fields(d);  // field 99 twice is one violation
  EXPECT_NE(status.error_message().find("spec.optimization: unknown field number 99"),
            std::string::npos)
      << status.error_message();
  EXPECT_EQ(JobCount(), 0);

  // The same spec without them is accepted.
  request.mutable_spec()->DiscardUnknownFields();
  EXPECT_TRUE(SubmitRequest(request).ok());
}

TEST_F(ErrorDetailsTest, JobErrorsCarryTheJobAndItsState) {
  v1::Job job;
  grpc::Status status = GetJob("12345", &job);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "job 12345 not found");
  Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kJobNotFound);
  EXPECT_EQ(d.info.metadata().at("job_id"), "12345");

  const std::string id = SubmitOk(ValidSpec());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetArtifactRequest request;
  request.set_job_id(id);
  auto reader = jobs_->GetArtifact(&ctx, request);
  v1::GetArtifactResponse ignored;
  while (reader->Read(&ignored)) {
  }
  status = reader->Finish();
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kJobStateConflict);
  EXPECT_EQ(d.info.metadata().at("job_id"), id);
  EXPECT_EQ(d.info.metadata().at("state"), "QUEUED");

  v1::ListJobsRequest list;
  list.set_page_token("not-a-token");
  grpc::ClientContext list_ctx;
  SetDeadline(&list_ctx);
  v1::ListJobsResponse page;
  status = jobs_->ListJobs(&list_ctx, list, &page);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kPageTokenInvalid);
  EXPECT_TRUE(HasField(d, "page_token", "not a token")) << Fields(d);
}

class WatchLimitTest : public ErrorDetailsTest {
 protected:
  void Customize(TerndOptions* options) override { options->max_watch_streams_per_caller = 1; }
};

TEST_F(WatchLimitTest, TheWatchStreamLimitSaysWhenToRetry) {
  const std::string id = SubmitOk(ValidSpec());
  grpc::ClientContext first_ctx;
  SetDeadline(&first_ctx);
  v1::WatchJobRequest request;
  request.set_job_id(id);
  auto first = jobs_->WatchJob(&first_ctx, request);
  v1::JobEvent event;
  ASSERT_TRUE(first->Read(&event));  // the stream is open

  grpc::ClientContext second_ctx;
  SetDeadline(&second_ctx);
  auto second = jobs_->WatchJob(&second_ctx, request);
  while (second->Read(&event)) {
  }
  const grpc::Status status = second->Finish();
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  const Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kWatchStreamLimit);
  ASSERT_TRUE(d.has_retry);
  EXPECT_GT(d.retry.retry_delay().seconds(), 0);
  ASSERT_EQ(d.quota.size(), 1u);
  EXPECT_EQ(d.quota[0].first, "owner:anonymous");
  first_ctx.TryCancel();
  first->Finish();
}

class QuotaDetailsTest : public ErrorDetailsTest {
 protected:
  void Customize(TerndOptions* options) override {
    std::ofstream((dir_ / "quotas").string()) << "alice cpu=4 jobs=1 priority=5\n";
    options->quota_file = (dir_ / "quotas").string();
  }
};

TEST_F(QuotaDetailsTest, QuotaRefusalsCarryQuotaFailure) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = ValidSpec();
  request.mutable_spec()->set_priority(9);
  grpc::Status status = SubmitRequest(request, "alice");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  Decoded d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kPriorityNotAllowed);
  EXPECT_EQ(d.info.metadata().at("max_priority"), "5");
  EXPECT_TRUE(HasField(d, "spec.priority", "at most 5")) << Fields(d);

  request.mutable_spec()->set_priority(0);
  ASSERT_TRUE(SubmitRequest(request, "alice").ok());
  status = SubmitRequest(request, "alice");  // a second unfinished job: jobs=1
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  d = Decode(status);
  EXPECT_EQ(d.info.reason(), error_reason::kQuotaExceeded);
  EXPECT_EQ(d.info.metadata().at("owner"), "alice");
  ASSERT_EQ(d.quota.size(), 1u);
  EXPECT_EQ(d.quota[0].first, "owner:alice");
  EXPECT_NE(d.quota[0].second.find("at most 1 unfinished jobs"), std::string::npos);
}

// Two authenticated callers over mutual TLS ("client" and "other-client",
// tests/auth/make_test_certs.sh); "client" is an admin (--tls-admin-names).
class ExistenceTest : public testing::TerndTest {
 protected:
  static void SetUpTestSuite() {
    certs_ =
        new std::string(::testing::TempDir() + "tern-error-certs-" + std::to_string(::getpid()));
    certs_ok_ = std::system(("bash " TERN_MAKE_TEST_CERTS " " + *certs_).c_str()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    std::filesystem::remove_all(*certs_, ignored);
    delete certs_;
  }
  void SetUp() override {
    ASSERT_TRUE(certs_ok_) << "openssl could not make the test certificates";
    testing::TerndTest::SetUp();
  }
  void Customize(TerndOptions* options) override {
    options->tls.cert_file = File("server.pem");
    options->tls.key_file = File("server.key");
    options->tls.client_ca_file = File("ca.pem");
    options->tls_admin_names = "client";
  }
  static std::string File(const std::string& name) { return *certs_ + "/" + name; }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  std::unique_ptr<v1::JobService::Stub> StubOf(const std::string& who) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = Read(File("ca.pem"));
    ssl.pem_cert_chain = Read(File(who + ".pem"));
    ssl.pem_private_key = Read(File(who + ".key"));
    return v1::JobService::NewStub(
        grpc::CreateChannel(ternd_->address(), grpc::SslCredentials(ssl)));
  }

  static std::string* certs_;
  static bool certs_ok_;
};
std::string* ExistenceTest::certs_ = nullptr;
bool ExistenceTest::certs_ok_ = false;

TEST_F(ExistenceTest, AnotherOwnersJobLooksExactlyLikeAnAbsentOne) {
  auto admin = StubOf("client");
  auto other = StubOf("other-client");
  auto submit = [](v1::JobService::Stub* stub) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::SubmitJobRequest request;
    *request.mutable_spec() = ValidSpec();
    v1::SubmitJobResponse response;
    const grpc::Status status = stub->SubmitJob(&ctx, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job().id();
  };
  const std::string admins_job = submit(admin.get());
  const std::string others_job = submit(other.get());
  ASSERT_FALSE(admins_job.empty());
  ASSERT_FALSE(others_job.empty());
  const std::string absent = "4242";

  // What `stub` gets for each job-id RPC on `id`: code, message, details.
  auto answers = [](v1::JobService::Stub* stub, const std::string& id) {
    std::vector<grpc::Status> out;
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::GetJobRequest request;
      request.set_job_id(id);
      v1::Job job;
      out.push_back(stub->GetJob(&ctx, request, &job));
    }
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::CancelJobRequest request;
      request.set_job_id(id);
      v1::Job job;
      out.push_back(stub->CancelJob(&ctx, request, &job));
    }
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::WatchJobRequest request;
      request.set_job_id(id);
      auto reader = stub->WatchJob(&ctx, request);
      v1::JobEvent event;
      while (reader->Read(&event)) {
      }
      out.push_back(reader->Finish());
    }
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::GetArtifactRequest request;
      request.set_job_id(id);
      auto reader = stub->GetArtifact(&ctx, request);
      v1::GetArtifactResponse chunk;
      while (reader->Read(&chunk)) {
      }
      out.push_back(reader->Finish());
    }
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::UpdateJobRequest request;
      request.mutable_job()->set_id(id);
      request.mutable_job()->mutable_spec()->set_name("renamed");
      request.mutable_update_mask()->add_paths("spec.name");
      v1::Job job;
      out.push_back(stub->UpdateJob(&ctx, request, &job));
    }
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::DeleteJobRequest request;
      request.set_job_id(id);
      google::protobuf::Empty empty;
      out.push_back(stub->DeleteJob(&ctx, request, &empty));
    }
    return out;
  };
  const std::vector<grpc::Status> foreign = answers(other.get(), admins_job);
  const std::vector<grpc::Status> missing = answers(other.get(), absent);
  ASSERT_EQ(foreign.size(), 6u);
  for (size_t i = 0; i < foreign.size(); ++i) {
    SCOPED_TRACE("rpc " + std::to_string(i));
    EXPECT_EQ(foreign[i].error_code(), grpc::StatusCode::NOT_FOUND) << foreign[i].error_message();
    EXPECT_EQ(missing[i].error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(foreign[i].error_message(), "job " + admins_job + " not found");
    EXPECT_EQ(missing[i].error_message(), "job " + absent + " not found");
    EXPECT_EQ(foreign[i].error_message().find("client"), std::string::npos);
    const Decoded f = Decode(foreign[i]);
    const Decoded m = Decode(missing[i]);
    EXPECT_EQ(f.info.reason(), error_reason::kJobNotFound);
    EXPECT_EQ(m.info.reason(), error_reason::kJobNotFound);
    ASSERT_EQ(f.info.metadata().size(), 1u);
    EXPECT_EQ(f.info.metadata().at("job_id"), admins_job);
    // Same shape: only the id differs.
    google::rpc::ErrorInfo f_info = f.info, m_info = m.info;
    f_info.clear_metadata();
    m_info.clear_metadata();
    EXPECT_EQ(f_info.SerializeAsString(), m_info.SerializeAsString());
    EXPECT_EQ(f.status.details_size(), m.status.details_size());
  }
  // The owner sees its job; the admin sees every job.
  for (const auto& [stub, id] :
       {std::make_pair(other.get(), others_job), std::make_pair(admin.get(), others_job),
        std::make_pair(admin.get(), admins_job)}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetJobRequest request;
    request.set_job_id(id);
    v1::Job job;
    EXPECT_TRUE(stub->GetJob(&ctx, request, &job).ok()) << id;
  }
  // The admin's job is still there: other-client's cancel did nothing.
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetJobRequest request;
    request.set_job_id(admins_job);
    v1::Job job;
    ASSERT_TRUE(admin->GetJob(&ctx, request, &job).ok());
    EXPECT_NE(job.state(), v1::JOB_STATE_CANCELLED);
  }
}

// Every reason ternd can send is in the "Error reasons" table of
// job_service.proto (the API reference), and the table names no other.
TEST(ErrorReasonsTest, EveryReasonIsDocumentedInTheServiceProto) {
  std::ifstream in(TERN_JOB_SERVICE_PROTO);
  ASSERT_TRUE(in) << TERN_JOB_SERVICE_PROTO;
  std::stringstream text;
  text << in.rdbuf();
  // Table rows: "//   REASON  CODE  when ...".
  std::set<std::string> documented;
  std::istringstream lines(text.str());
  std::string line;
  bool in_table = false;
  while (std::getline(lines, line)) {
    if (line.find("Error reasons (google.rpc.ErrorInfo.reason") != std::string::npos) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (line.rfind("//", 0) != 0 || line == "//") break;
    std::istringstream words(line.substr(2));
    std::string word;
    if (line.rfind("//   ", 0) == 0 && line.size() > 5 && line[5] != ' ' && (words >> word)) {
      documented.insert(word);
    }
  }
  ASSERT_FALSE(documented.empty()) << "no reason table found";
  std::set<std::string> defined;
  for (const char* reason : error_reason::kAllErrorReasons) {
    defined.insert(reason);
    EXPECT_EQ(documented.count(reason), 1u) << reason << " is not documented";
  }
  for (const std::string& reason : documented) {
    EXPECT_EQ(defined.count(reason), 1u) << reason << " is documented but not defined";
  }
}

}  // namespace
}  // namespace tern::server
