// tern-coco-eval, run as a process: the summary layout for the hand-made
// files of tests/worker/detection/testdata (numbers worked in eval_test.cc,
// PinnedCocoSummary), --json and --max-dets, and exit 2 with a message
// naming the file and the field for malformed input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "tests/worker/detection/test_util.h"

namespace tern::detection {
namespace {

const std::string kAnnotations =
    TERN_DETECTION_TESTDATA "/coco_eval_annotations.json";
const std::string kResults = TERN_DETECTION_TESTDATA "/coco_eval_results.json";

struct Outcome {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

Outcome RunEval(const std::string& args) {
  const std::string cmd =
      std::string(TERN_COCO_EVAL_BINARY) + " " + args + " 2>&1";
  Outcome run;
  FILE* pipe = popen(cmd.c_str(), "r");
  TERN_CHECK(pipe != nullptr) << cmd;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) run.output.append(buf, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

TEST(CocoEvalCommandTest, PrintsTheTwelveNumbersInPycocotoolsLayout) {
  const Outcome run =
      RunEval("--annotations " + kAnnotations + " --results " + kResults);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output,
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.567\n"
            " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.752\n"
            " Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = 0.500\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 0.500\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 0.600\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 1.000\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.433\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ] = 0.567\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.567\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 0.500\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 0.600\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 1.000\n");
}

TEST(CocoEvalCommandTest, JsonAndMaxDets) {
  const Outcome json = RunEval("--annotations " + kAnnotations + " --results " +
                           kResults + " --json");
  EXPECT_EQ(json.exit_code, 0) << json.output;
  EXPECT_NE(json.output.find(R"("ap75":0.5,)"), std::string::npos)
      << json.output;
  EXPECT_NE(json.output.find(R"("ar_large":1.0,)"), std::string::npos)
      << json.output;
  EXPECT_NE(json.output.find(R"("max_detections":100})"), std::string::npos)
      << json.output;
  // maxDets 1: one detection per image and category. Category 1 keeps d1
  // and d4 (recall 2/3, AP 67/101 at every threshold); category 2 keeps d5
  // and d6 as before. AP = (10 * 67/101 + 4 * 51/101) / 20 = 0.4327.
  const Outcome one = RunEval("--annotations " + kAnnotations + " --results " +
                          kResults + " --max-dets 1");
  EXPECT_EQ(one.exit_code, 0) << one.output;
  EXPECT_EQ(one.output.rfind(
                " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | "
                "maxDets=  1 ] = 0.433\n",
                0),
            0u)
      << one.output;
}

TEST(CocoEvalCommandTest, MalformedInputExitsTwoNamingFileAndField) {
  TempDir dir;
  const std::string bad_results = dir.Path("bad_results.json");
  WriteText(bad_results,
            R"([{"image_id":1,"category_id":1,"bbox":[0,0,1],"score":0.5}])");
  Outcome run = RunEval("--annotations " + kAnnotations + " --results " +
                    bad_results);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(bad_results + ": [0].bbox: expected 4 numbers"),
            std::string::npos)
      << run.output;

  const std::string bad_annotations = dir.Path("bad_annotations.json");
  WriteText(bad_annotations,
            R"({"images":[{"id":1,"file_name":"a.png","width":8,"height":8}],)"
            R"("categories":[{"id":1,"name":"a"}],)"
            R"("annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":"x"}]})");
  run = RunEval("--annotations " + bad_annotations + " --results " + kResults);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(bad_annotations + ": annotations[0].bbox"),
            std::string::npos)
      << run.output;

  const std::string truncated = dir.Path("truncated.json");
  WriteText(truncated, "[{\"image_id\": 1,");
  run = RunEval("--annotations " + kAnnotations + " --results " + truncated);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(truncated), std::string::npos) << run.output;

  const std::string unknown = dir.Path("unknown.json");
  WriteText(unknown,
            R"([{"image_id":9,"category_id":1,"bbox":[0,0,1,1],"score":0.5}])");
  run = RunEval("--annotations " + kAnnotations + " --results " + unknown);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(unknown), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("detections[0].image_id: unknown image id 9"),
            std::string::npos)
      << run.output;

  run = RunEval("--annotations " + dir.Path("missing.json") + " --results " +
                kResults);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(dir.Path("missing.json")), std::string::npos)
      << run.output;

  run = RunEval("--annotations " + kAnnotations + " --results " + kResults +
                " --max-dets 0");
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("--max-dets"), std::string::npos) << run.output;

  run = RunEval("--results " + kResults);  // --annotations missing
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("--annotations"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace tern::detection
