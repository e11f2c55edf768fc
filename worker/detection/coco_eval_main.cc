// tern-coco-eval: scores a COCO results file against COCO annotations with
// the COCO protocol (pycocotools' COCOeval, iouType "bbox") and prints the
// 12 numbers of its summary in its layout.
//
//   tern-coco-eval --annotations A.json --results R.json [--max-dets 100]
//                  [--json]
//
// Ground truth is scored with its boxes as the file writes them, also where
// they cross the image's edge (pycocotools does the same; tern's training
// reader clips them). --json prints one object instead: "ap" ... "ar_large"
// (null where pycocotools prints -1) and "max_detections". The AP is the
// standard COCO AP only with --max-dets 100.
//
// Exit status: 0 on success; 2 for a usage error or a file that cannot be
// read or is malformed (the message names the file and the JSON field), or
// results naming images or categories the annotations lack.
#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "worker/detection/coco.h"
#include "worker/detection/eval.h"

int main(int argc, char** argv) {
  namespace det = tern::detection;
  std::string annotations_path;
  std::string results_path;
  int max_detections = 100;
  bool json = false;
  CLI::App app{
      "Scores a COCO results file against COCO annotations (bbox AP and AR, "
      "as pycocotools' COCOeval)."};
  app.add_option("--annotations", annotations_path,
                 "COCO annotations (instances_*.json)")
      ->required();
  app.add_option("--results", results_path,
                 "COCO results: [{image_id, category_id, bbox, score}]")
      ->required();
  app.add_option("--max-dets", max_detections,
                 "Detections kept per image and category (COCO: 100)");
  app.add_flag("--json", json, "Print the 12 numbers as one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  auto fail = [](const std::string& message) {
    std::cerr << "tern-coco-eval: " << message << "\n";
    return 2;
  };
  if (max_detections < 1) {
    return fail("--max-dets: must be >= 1, got " +
                std::to_string(max_detections));
  }

  det::CocoReadOptions read;
  read.out_of_image = det::BoxPolicy::kKeep;  // score the boxes as written
  const auto truth = det::ReadCocoFile(annotations_path, read);
  if (!truth.ok()) return fail(truth.status().ToString());
  const auto results = det::ReadDetectionsJson(results_path);
  if (!results.ok()) return fail(results.status().ToString());
  det::EvalOptions options;
  options.max_detections = max_detections;
  const auto metrics = det::EvaluateDetections(*truth, *results, options);
  if (!metrics.ok()) {
    return fail(results_path + " against " + annotations_path + ": " +
                metrics.status().ToString());
  }
  if (json) {
    nlohmann::json out = nlohmann::json::parse(det::CocoMetricsToJson(*metrics));
    out["max_detections"] = max_detections;
    std::cout << out.dump() << "\n";
  } else {
    std::cout << det::FormatCocoSummary(*metrics, max_detections);
  }
  return 0;
}
