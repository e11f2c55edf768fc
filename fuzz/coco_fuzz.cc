// Fuzz target: COCO annotation files (detection::ParseCocoJson), with boxes
// outside their image clipped, rejected or kept (the first byte picks).
// Properties: nothing throws or crashes; what parses writes back
// (ToCocoJson) to text that parses to the same data set.
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "worker/detection/coco.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  tern::detection::CocoReadOptions options;
  options.out_of_image = data[0] % 3 == 1   ? tern::detection::BoxPolicy::kReject
                         : data[0] % 3 == 2 ? tern::detection::BoxPolicy::kKeep
                                            : tern::detection::BoxPolicy::kClip;
  const std::string_view text = tern::fuzz::AsText(data + 1, size - 1);
  tern::StatusOr<tern::detection::CocoDataset> d =
      tern::detection::ParseCocoJson(text, "fuzz", options);
  if (!d.ok()) return 0;
  const std::string json = tern::detection::ToCocoJson(*d);
  tern::StatusOr<tern::detection::CocoDataset> again =
      tern::detection::ParseCocoJson(json, "again", options);
  TERN_CHECK(again.ok()) << again.status() << ": " << json;
  TERN_CHECK(tern::detection::ToCocoJson(*again) == json) << json;
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  const std::string coco =
      R"({"info":{"description":"shapes"},"licenses":[],)"
      R"("images":[{"id":1,"file_name":"a.png","width":64,"height":48},)"
      R"({"id":7,"file_name":"dir/b.jpg","width":32,"height":32}],)"
      R"("categories":[{"id":3,"name":"circle","supercategory":"shape"},{"id":1,"name":"square"}],)"
      R"("annotations":[{"id":10,"image_id":1,"category_id":3,"bbox":[4.5,6,20,10.25],)"
      R"("area":180.5,"iscrowd":0,"segmentation":[[4.5,6,24.5,6,24.5,16.25]]},)"
      R"({"id":11,"image_id":7,"category_id":1,"bbox":[30,30,8,8],"iscrowd":1},)"
      R"({"id":12,"image_id":1,"category_id":1,"bbox":[0,0,64,48]}]})";
  return {std::string(1, '\0') + coco, std::string(1, '\x01') + coco,
          std::string(1, '\x02') + coco};
}
