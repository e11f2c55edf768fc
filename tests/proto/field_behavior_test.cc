// The (google.api.field_behavior) annotations of tern.v1 say what they are
// meant to: who sets each field of a Job, which request fields are required.
// (That ternd enforces the REQUIRED ones: tests/server/api_surface_test.cc.)
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "google/api/field_behavior.pb.h"
#include "tern/v1/job.pb.h"
#include "tern/v1/job_service.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

std::set<int> Behaviors(const FieldDescriptor* field) {
  std::set<int> out;
  const auto& options = field->options();
  for (int i = 0; i < options.ExtensionSize(google::api::field_behavior); ++i) {
    out.insert(options.GetExtension(google::api::field_behavior, i));
  }
  return out;
}

TEST(FieldBehaviorTest, EveryJobFieldIsOutputOnlyButTheImmutableSpecAndTheEtag) {
  const Descriptor* job = v1::Job::descriptor();
  ASSERT_GE(job->field_count(), 14);
  for (int i = 0; i < job->field_count(); ++i) {
    const FieldDescriptor* f = job->field(i);
    // etag: set by the server, and sent back by a client as UpdateJob's
    // precondition (AIP-154).
    const std::set<int> expected = {f->name() == "spec"   ? google::api::IMMUTABLE
                                    : f->name() == "etag" ? google::api::OPTIONAL
                                                          : google::api::OUTPUT_ONLY};
    EXPECT_EQ(Behaviors(f), expected)
        << "tern.v1.Job." << f->name()
        << ": a Job field is set by the server (OUTPUT_ONLY) or, like spec, at submission "
           "(IMMUTABLE); annotate it";
  }
  ASSERT_NE(job->FindFieldByName("etag"), nullptr);
  EXPECT_EQ(Behaviors(v1::JobSpec::descriptor()->FindFieldByName("owner")),
            std::set<int>{google::api::OUTPUT_ONLY});
}

TEST(FieldBehaviorTest, RequestFieldsAreRequiredOrOptionalAsDocumented) {
  const std::map<std::string, std::set<std::string>> required = {
      {"tern.v1.SubmitJobRequest", {"spec"}},
      {"tern.v1.GetJobRequest", {"job_id"}},
      {"tern.v1.ListJobsRequest", {}},
      {"tern.v1.UpdateJobRequest", {"job", "update_mask"}},
      {"tern.v1.DeleteJobRequest", {"job_id"}},
      {"tern.v1.CancelJobRequest", {"job_id"}},
      {"tern.v1.WatchJobRequest", {"job_id"}},
      {"tern.v1.GetArtifactRequest", {"job_id"}},
      {"tern.v1.ListAgentsRequest", {}},
  };
  const auto* service = v1::GetJobRequest::descriptor()->file()->FindServiceByName("JobService");
  ASSERT_NE(service, nullptr);
  for (int m = 0; m < service->method_count(); ++m) {
    const Descriptor* input = service->method(m)->input_type();
    if (input->field_count() == 0) continue;  // WhoAmIRequest
    const auto expected = required.find(input->full_name());
    ASSERT_NE(expected, required.end())
        << input->full_name() << ": add it to this table (and annotate its fields)";
    for (int i = 0; i < input->field_count(); ++i) {
      const FieldDescriptor* f = input->field(i);
      const bool is_required = expected->second.count(f->name()) > 0;
      EXPECT_EQ(Behaviors(f),
                std::set<int>{is_required ? google::api::REQUIRED : google::api::OPTIONAL})
          << input->full_name() << "." << f->name();
    }
  }
}

// The agents' API: every request field of tern.v1.WorkerService is REQUIRED
// or OPTIONAL (ternd enforces the REQUIRED ones: worker_service_test.cc).
TEST(FieldBehaviorTest, WorkerServiceRequestFieldsAreRequiredOrOptionalAsDocumented) {
  const std::set<std::string> lease = {"agent_id", "lease_id"};
  std::set<std::string> lease_and_ref = lease;
  lease_and_ref.insert("ref");
  const std::map<std::string, std::set<std::string>> required = {
      {"tern.v1.RegisterRequest", {"agent_id", "host", "slots"}},
      {"tern.v1.HeartbeatRequest", lease},
      {"tern.v1.StreamAssignmentsRequest", lease},
      {"tern.v1.ReportProgressRequest", lease_and_ref},
      {"tern.v1.ReportExitRequest", lease_and_ref},
      {"tern.v1.DrainRequest", lease},
      {"tern.v1.DeregisterRequest", lease},
  };
  const auto* service =
      v1::RegisterRequest::descriptor()->file()->FindServiceByName("WorkerService");
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(service->method_count(), static_cast<int>(required.size()));
  for (int m = 0; m < service->method_count(); ++m) {
    const Descriptor* input = service->method(m)->input_type();
    const auto expected = required.find(input->full_name());
    ASSERT_NE(expected, required.end())
        << input->full_name() << ": add it to this table (and annotate its fields)";
    for (int i = 0; i < input->field_count(); ++i) {
      const FieldDescriptor* f = input->field(i);
      EXPECT_EQ(Behaviors(f),
                std::set<int>{expected->second.count(f->name()) > 0 ? google::api::REQUIRED
                                                                    : google::api::OPTIONAL})
          << input->full_name() << "." << f->name();
    }
  }
}

// The check above fails for a field without annotations: its helper sees them.
TEST(FieldBehaviorTest, BehaviorsReadsTheAnnotation) {
  EXPECT_EQ(Behaviors(v1::Job::descriptor()->FindFieldByName("id")),
            std::set<int>{google::api::OUTPUT_ONLY});
  EXPECT_TRUE(Behaviors(v1::JobSpec::descriptor()->FindFieldByName("priority")).empty());
}

}  // namespace
}  // namespace tern
