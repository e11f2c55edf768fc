// ternd must answer gRPC health checks and server reflection (so grpcurl and
// grpc_cli work). This checks that the libraries tern_grpc_extras brings in
// provide both, and that reflection can describe tern.v1 and grpc.health.v1.
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/sync_stream.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tern/v1/job_service.grpc.pb.h"
#include "tern/v1/worker_service.grpc.pb.h"

namespace tern {
namespace {

namespace pb = google::protobuf;

class HealthReflectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    // Base services: every method answers UNIMPLEMENTED, enough to register.
    builder.RegisterService(&jobs_);
    builder.RegisterService(&workers_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  static void SetDeadline(grpc::ClientContext* ctx) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(10));
  }

  // Sends one ServerReflectionRequest (hand-encoded: the reflection .proto's
  // generated headers are not installed) and returns the raw response.
  std::string Reflect(const std::string& request_bytes) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::internal::RpcMethod method(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
        stream(grpc::internal::ClientReaderWriterFactory<
               grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel_.get(),
                                                           method, &ctx));
    grpc::Slice slice(request_bytes);
    grpc::ByteBuffer request(&slice, 1);
    EXPECT_TRUE(stream->Write(request));
    EXPECT_TRUE(stream->WritesDone());
    grpc::ByteBuffer response;
    EXPECT_TRUE(stream->Read(&response));
    const grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return bytes;
  }

  // Encodes a length-delimited string field.
  static std::string StringField(int number, const std::string& value) {
    std::string out;
    out.push_back(static_cast<char>((number << 3) | 2));
    out.push_back(static_cast<char>(value.size()));  // < 128 here
    return out + value;
  }

  // Returns the length-delimited values of field `number` of a message.
  static std::vector<std::string> Fields(const std::string& bytes, int number) {
    pb::UnknownFieldSet set;
    EXPECT_TRUE(set.ParseFromString(bytes));
    std::vector<std::string> out;
    for (int i = 0; i < set.field_count(); ++i) {
      const pb::UnknownField& f = set.field(i);
      if (f.number() == number && f.type() == pb::UnknownField::TYPE_LENGTH_DELIMITED) {
        out.push_back(f.length_delimited());
      }
    }
    return out;
  }

  // Names of the files reflection returns for a symbol (empty on error).
  std::vector<std::string> FilesForSymbol(const std::string& symbol) {
    // ServerReflectionRequest.file_containing_symbol = 4.
    const std::string response = Reflect(StringField(4, symbol));
    std::vector<std::string> names;
    // ServerReflectionResponse.file_descriptor_response = 4, whose
    // FileDescriptorResponse.file_descriptor_proto = 1 (repeated bytes).
    for (const std::string& fdr : Fields(response, 4)) {
      for (const std::string& file : Fields(fdr, 1)) {
        pb::FileDescriptorProto proto;
        EXPECT_TRUE(proto.ParseFromString(file));
        names.push_back(proto.name());
      }
    }
    return names;
  }

  tern::v1::JobService::Service jobs_;
  tern::v1::WorkerService::Service workers_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(HealthReflectionTest, DefaultHealthServiceAnswersServing) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::health::v1::HealthCheckRequest request;  // "" = the whole server
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&ctx, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(HealthReflectionTest, ReflectionListsServices) {
  // ServerReflectionRequest.list_services = 7.
  const std::string response = Reflect(StringField(7, "*"));
  std::vector<std::string> names;
  // ServerReflectionResponse.list_services_response = 6, whose
  // ListServiceResponse.service = 1 holds ServiceResponse{name = 1}.
  for (const std::string& list : Fields(response, 6)) {
    for (const std::string& service : Fields(list, 1)) {
      for (const std::string& name : Fields(service, 1)) names.push_back(name);
    }
  }
  for (const char* want :
       {"tern.v1.JobService", "tern.v1.WorkerService", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end())
        << want << " not in " << ::testing::PrintToString(names);
  }
}

TEST_F(HealthReflectionTest, ReflectionDescribesOurFiles) {
  const std::vector<std::string> jobs = FilesForSymbol("tern.v1.JobService");
  EXPECT_NE(std::find(jobs.begin(), jobs.end(), "tern/v1/job_service.proto"),
            jobs.end())
      << ::testing::PrintToString(jobs);
  EXPECT_NE(std::find(jobs.begin(), jobs.end(), "tern/v1/job.proto"),
            jobs.end())
      << ::testing::PrintToString(jobs);

  const std::vector<std::string> health =
      FilesForSymbol("grpc.health.v1.Health");
  EXPECT_NE(
      std::find(health.begin(), health.end(), "grpc/health/v1/health.proto"),
      health.end())
      << ::testing::PrintToString(health);
}

}  // namespace
}  // namespace tern
