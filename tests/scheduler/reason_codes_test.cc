// The reason codes of scheduler/reason_codes.h against their documentation,
// proto/tern/v1/job.proto's StateReason comment: every code the constants
// define is documented in the right list, and every documented code exists.
#include "scheduler/reason_codes.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace tern::scheduler {
namespace {

struct DocumentedCodes {
  std::set<std::string> state;
  std::set<std::string> wait;
};

// The "// - CODE: ..." items of the comment above `message StateReason`,
// split at its "Wait reasons" heading.
DocumentedCodes ParseStateReasonComment(const std::string& proto) {
  DocumentedCodes codes;
  std::istringstream lines(proto);
  std::string line;
  std::vector<std::string> comment;
  while (std::getline(lines, line)) {
    if (line.rfind("message StateReason {", 0) == 0) break;
    if (line.rfind("//", 0) == 0) {
      comment.push_back(line);
    } else {
      comment.clear();
    }
  }
  bool wait = false;
  for (const std::string& c : comment) {
    if (c.find("Wait reasons") != std::string::npos) wait = true;
    if (c.rfind("// - ", 0) != 0) continue;
    const size_t colon = c.find(':', 5);
    if (colon == std::string::npos) continue;
    (wait ? codes.wait : codes.state).insert(c.substr(5, colon - 5));
  }
  return codes;
}

std::string ReadProto() {
  std::ifstream in(TERN_JOB_PROTO);
  EXPECT_TRUE(in.good()) << "cannot read " << TERN_JOB_PROTO;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(ReasonCodesTest, EveryCodeIsDocumentedAndEveryDocumentedCodeExists) {
  const DocumentedCodes documented = ParseStateReasonComment(ReadProto());
  ASSERT_FALSE(documented.state.empty()) << "no \"// - CODE:\" items above message StateReason";
  ASSERT_FALSE(documented.wait.empty()) << "no wait reasons above message StateReason";
  const std::set<std::string> state(std::begin(reason::kAllStateReasons),
                                    std::end(reason::kAllStateReasons));
  const std::set<std::string> wait(std::begin(reason::kAllWaitReasons),
                                   std::end(reason::kAllWaitReasons));
  for (const std::string& code : state) {
    EXPECT_EQ(documented.state.count(code), 1u)
        << code << ": a state reason that job.proto's StateReason comment does not document";
  }
  for (const std::string& code : documented.state) {
    EXPECT_EQ(state.count(code), 1u)
        << code << ": documented as a state reason, but reason_codes.h has no such code";
  }
  for (const std::string& code : wait) {
    EXPECT_EQ(documented.wait.count(code), 1u)
        << code << ": a wait reason that job.proto's StateReason comment does not document";
  }
  for (const std::string& code : documented.wait) {
    EXPECT_EQ(wait.count(code), 1u)
        << code << ": documented as a wait reason, but reason_codes.h has no such code";
  }
}

TEST(ReasonCodesTest, ParserFindsAMissingOrExtraCode) {
  const std::string proto =
      "// Why.\n//\n// State reasons:\n// - SUBMITTED: queued.\n// - MADE_UP: never sent.\n"
      "//\n// Wait reasons (Job.wait_reason):\n// - OWNER_QUOTA: quota.\nmessage StateReason {\n";
  const DocumentedCodes codes = ParseStateReasonComment(proto);
  EXPECT_EQ(codes.state, (std::set<std::string>{"SUBMITTED", "MADE_UP"}));
  EXPECT_EQ(codes.wait, (std::set<std::string>{"OWNER_QUOTA"}));
}

TEST(ReasonCodesTest, CodesAreUniqueUpperSnakeCase) {
  std::set<std::string> seen;
  auto check = [&](const char* code) {
    const std::string c(code);
    EXPECT_TRUE(seen.insert(c).second) << c << " defined twice";
    EXPECT_FALSE(c.empty());
    for (char ch : c) EXPECT_TRUE((ch >= 'A' && ch <= 'Z') || ch == '_') << c;
  };
  for (const char* code : reason::kAllStateReasons) check(code);
  for (const char* code : reason::kAllWaitReasons) check(code);
}

}  // namespace
}  // namespace tern::scheduler
