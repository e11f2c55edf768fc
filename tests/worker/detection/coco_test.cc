#include "worker/detection/coco.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/worker/detection/test_util.h"

namespace tern::detection {
namespace {

const char kImages[] =
    R"({"id":7,"file_name":"a.png","width":64,"height":48},)"
    R"({"id":3,"file_name":"sub/b.png","width":32,"height":32},)"
    R"({"id":5,"file_name":"c.png","width":16,"height":16})";
const char kCategories[] = R"({"id":9,"name":"dog"},{"id":2,"name":"cat"})";
const char kAnnotations[] =
    R"({"id":1,"image_id":7,"category_id":9,"bbox":[1,2,10,20],"area":150.5,"iscrowd":0},)"
    R"({"id":4,"image_id":3,"category_id":2,"bbox":[0,0,32,32],"iscrowd":1},)"
    R"({"id":2,"image_id":7,"category_id":2,"bbox":[10.5,0.25,3,4],"iscrowd":false})";

std::string Doc(const std::string& images, const std::string& categories,
                const std::string& annotations) {
  return R"({"info":{},"images":[)" + images + R"(],"categories":[)" +
         categories + R"(],"annotations":[)" + annotations + "]}";
}

std::string ValidDoc() { return Doc(kImages, kCategories, kAnnotations); }

// One annotation on image 7 (64 x 48) of category 9 with the given fields.
std::string DocWithAnnotation(const std::string& fields) {
  return Doc(kImages, kCategories,
             R"({"id":1,"image_id":7,"category_id":9,)" + fields + "}");
}

class CocoReaderTest : public ::testing::Test {
 protected:
  StatusOr<CocoDataset> ReadText(const std::string& text,
                                 const CocoReadOptions& options = {}) {
    const std::string path = dir_.Path("instances.json");
    WriteText(path, text);
    return ReadCocoFile(path, options);
  }
  // Expects INVALID_ARGUMENT "<path>: <message>" with `message` in it.
  void ExpectInvalid(const std::string& text, const std::string& message) {
    const auto result = ReadText(text);
    ASSERT_FALSE(result.ok()) << "accepted: " << text;
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument)
        << result.status();
    EXPECT_EQ(
        result.status().message().rfind(dir_.Path("instances.json") + ": ", 0),
        0u)
        << result.status();
    EXPECT_NE(result.status().message().find(message), std::string::npos)
        << "want \"" << message << "\" in " << result.status();
  }

  TempDir dir_;
};

TEST_F(CocoReaderTest, ParsesImagesCategoriesAndAnnotations) {
  const auto d = ReadText(ValidDoc());
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->images.size(), 3u);
  EXPECT_EQ(d->images[0].id, 7);
  EXPECT_EQ(d->images[0].file_name, "a.png");
  EXPECT_EQ(d->images[0].width, 64);
  EXPECT_EQ(d->images[0].height, 48);
  ASSERT_EQ(d->annotations.size(), 3u);
  const CocoAnnotation& a = d->annotations[0];
  EXPECT_EQ(a.id, 1);
  EXPECT_EQ(a.image_id, 7);
  EXPECT_EQ(a.category_id, 9);
  EXPECT_DOUBLE_EQ(a.bbox.x, 1);
  EXPECT_DOUBLE_EQ(a.bbox.y, 2);
  EXPECT_DOUBLE_EQ(a.bbox.w, 10);
  EXPECT_DOUBLE_EQ(a.bbox.h, 20);
  EXPECT_DOUBLE_EQ(a.area, 150.5);
  EXPECT_FALSE(a.iscrowd);
  EXPECT_TRUE(d->annotations[1].iscrowd);
  EXPECT_DOUBLE_EQ(d->annotations[1].area, 32 * 32);  // absent: w * h
  EXPECT_FALSE(d->annotations[2].iscrowd);
  EXPECT_DOUBLE_EQ(d->annotations[2].bbox.x, 10.5);
}

TEST_F(CocoReaderTest, MapsCategoryIdsToClassesInSortedIdOrder) {
  const auto d = ReadText(ValidDoc());
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->categories.size(), 2u);
  EXPECT_EQ(d->categories[0].id, 2);
  EXPECT_EQ(d->categories[0].name, "cat");
  EXPECT_EQ(d->categories[1].id, 9);
  EXPECT_EQ(d->ClassIndex(2), 0);
  EXPECT_EQ(d->ClassIndex(9), 1);
  EXPECT_EQ(d->ClassIndex(5), -1);
  EXPECT_EQ(d->ClassIndex(100), -1);
}

TEST_F(CocoReaderTest, ToCocoJsonRoundTrips) {
  const auto d = ReadText(ValidDoc());
  ASSERT_TRUE(d.ok()) << d.status();
  const std::string json = ToCocoJson(*d, "test");
  const auto again = ParseCocoJson(json, "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ToCocoJson(*again, "test"), json);
  EXPECT_EQ(again->annotations[2].bbox.y, 0.25);
  EXPECT_EQ(again->annotations[0].area, 150.5);
}

TEST_F(CocoReaderTest, MissingFileIsNotFound) {
  const auto d = ReadCocoFile(dir_.Path("nope.json"));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("nope.json"), std::string::npos);
}

TEST_F(CocoReaderTest, TruncatedFileIsDataLossNamingTheFile) {
  const std::string doc = ValidDoc();
  for (size_t len : {size_t{0}, size_t{1}, doc.size() / 2, doc.size() - 1}) {
    const auto d = ReadText(doc.substr(0, len));
    ASSERT_FALSE(d.ok()) << len;
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << d.status();
    EXPECT_NE(d.status().message().find(dir_.Path("instances.json") +
                                        ": not valid JSON"),
              std::string::npos)
        << d.status();
  }
}

TEST_F(CocoReaderTest, NonFiniteNumbersAreRejected) {
  for (const char* bbox : {"[NaN,0,1,1]", "[1e999,0,1,1]", "[0,0,-1e999,1]"}) {
    const auto d = ReadText(DocWithAnnotation(std::string("\"bbox\":") + bbox));
    ASSERT_FALSE(d.ok()) << bbox;
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << d.status();
  }
}

TEST_F(CocoReaderTest, GarbageAndDeepNestingFailWithoutCrashing) {
  EXPECT_EQ(ReadText("\x89PNG\r\n\x1a\n\xff\xfe").status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(ReadText(std::string(100000, '[')).status().code(),
            StatusCode::kDataLoss);
  const std::string nested = std::string(5000, '[') + std::string(5000, ']');
  EXPECT_EQ(ReadText(nested).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(CocoReaderTest, RejectsWrongTopLevelShape) {
  ExpectInvalid("[]", "(root): expected an object, got array");
  ExpectInvalid(R"({"categories":[],"annotations":[]})", "missing \"images\"");
  ExpectInvalid(R"({"images":[],"annotations":[]})", "missing \"categories\"");
  ExpectInvalid(R"({"images":[],"categories":[]})", "missing \"annotations\"");
  ExpectInvalid(R"({"images":{},"categories":[],"annotations":[]})",
                "images: expected an array, got object");
}

TEST_F(CocoReaderTest, RejectsWrongImageFields) {
  ExpectInvalid(Doc("3", kCategories, ""), "images[0]: expected an object");
  ExpectInvalid(Doc(R"({"id":"7","file_name":"a.png","width":1,"height":1})",
                    kCategories, ""),
                "images[0].id: expected an integer, got string");
  ExpectInvalid(Doc(R"({"id":7,"width":1,"height":1})", kCategories, ""),
                "images[0]: missing \"file_name\"");
  ExpectInvalid(
      Doc(R"({"id":7,"file_name":"","width":1,"height":1})", kCategories, ""),
      "images[0].file_name: must not be empty");
  ExpectInvalid(
      Doc(R"({"id":7,"file_name":"a","width":64.5,"height":1})", kCategories,
          ""),
      "images[0].width: expected an integer, got a fractional number");
  ExpectInvalid(
      Doc(R"({"id":7,"file_name":"a","width":0,"height":1})", kCategories, ""),
      "images[0].width: must be in [1, 2^30], got 0");
  ExpectInvalid(
      Doc(R"({"id":7,"file_name":"a","width":1,"height":-3})", kCategories, ""),
      "images[0].height: must be in [1, 2^30], got -3");
  ExpectInvalid(
      Doc(R"({"id":18446744073709551615,"file_name":"a","width":1,"height":1})",
          kCategories, ""),
      "images[0].id: integer out of range");
  ExpectInvalid(Doc(std::string(kImages) +
                        R"(,{"id":7,"file_name":"d","width":1,"height":1})",
                    kCategories, ""),
                "images[3].id: duplicate image id 7");
}

TEST_F(CocoReaderTest, RejectsWrongCategoryFields) {
  ExpectInvalid(Doc(kImages, R"({"id":1,"name":3})", ""),
                "categories[0].name: expected a string, got number");
  ExpectInvalid(Doc(kImages, R"({"name":"x"})", ""),
                "categories[0]: missing \"id\"");
  ExpectInvalid(
      Doc(kImages, std::string(kCategories) + R"(,{"id":9,"name":"again"})",
          ""),
      "categories[2].id: duplicate category id 9");
}

TEST_F(CocoReaderTest, RejectsWrongAnnotationFields) {
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,2,3])"),
                "annotations[0].bbox: expected 4 numbers");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,2,3,4,5])"),
                "annotations[0].bbox: expected 4 numbers");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,"2",3,4])"),
                "annotations[0].bbox: expected 4 numbers");
  ExpectInvalid(DocWithAnnotation(R"("bbox":{"x":1})"),
                "annotations[0].bbox: expected 4 numbers");
  ExpectInvalid(DocWithAnnotation(R"("area":1)"),
                "annotations[0]: missing \"bbox\"");
  ExpectInvalid(
      DocWithAnnotation(R"("bbox":[1,2,-3,4])"),
      "annotations[0].bbox: width and height must be >= 0, got [1, 2, -3, 4]");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,2,3,4],"area":-1)"),
                "annotations[0].area: must be >= 0");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,2,3,4],"area":"big")"),
                "annotations[0].area: expected a number, got string");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[1,2,3,4],"iscrowd":2)"),
                "annotations[0].iscrowd: expected 0 or 1");
  ExpectInvalid(
      Doc(kImages, kCategories,
          R"({"id":1,"image_id":99,"category_id":9,"bbox":[0,0,1,1]})"),
      "annotations[0].image_id: unknown image id 99");
  ExpectInvalid(
      Doc(kImages, kCategories,
          R"({"id":1,"image_id":7,"category_id":5,"bbox":[0,0,1,1]})"),
      "annotations[0].category_id: unknown category id 5");
  ExpectInvalid(Doc(kImages, kCategories,
                    R"({"image_id":7,"category_id":9,"bbox":[0,0,1,1]})"),
                "annotations[0]: missing \"id\"");
  ExpectInvalid(
      Doc(kImages, kCategories, std::string(kAnnotations) + "," + kAnnotations),
      "annotations[3].id: duplicate annotation id 1");
  ExpectInvalid(Doc(kImages, kCategories, std::string(kAnnotations) + ",null"),
                "annotations[3]: expected an object");
}

TEST_F(CocoReaderTest, ClipsBoxesOutsideTheImageByDefault) {
  const auto d = ReadText(DocWithAnnotation(R"("bbox":[-5,40,20,20])"));
  ASSERT_TRUE(d.ok()) << d.status();
  const BoxXywh& b = d->annotations[0].bbox;  // image 7 is 64 x 48
  EXPECT_DOUBLE_EQ(b.x, 0);
  EXPECT_DOUBLE_EQ(b.y, 40);
  EXPECT_DOUBLE_EQ(b.w, 15);
  EXPECT_DOUBLE_EQ(b.h, 8);
  EXPECT_DOUBLE_EQ(d->annotations[0].area, 15 * 8);
  // The file's box stays for evaluation (pycocotools scores it), and is
  // what ToCocoJson writes back.
  ASSERT_TRUE(d->annotations[0].file_bbox.has_value());
  EXPECT_DOUBLE_EQ(d->annotations[0].file_bbox->x, -5);
  EXPECT_DOUBLE_EQ(d->annotations[0].file_bbox->h, 20);
  EXPECT_NE(ToCocoJson(*d).find("\"bbox\":[-5.0,40.0,20.0,20.0]"), std::string::npos)
      << ToCocoJson(*d);
  const auto inside = ReadText(DocWithAnnotation(R"("bbox":[1,2,3,4])"));
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_FALSE(inside->annotations[0].file_bbox.has_value());
  // A box with nothing inside the image is an error under kClip and kReject.
  ExpectInvalid(DocWithAnnotation(R"("bbox":[64,0,5,5])"),
                "annotations[0].bbox: box [64, 0, 5, 5] of image 7 (64x48) "
                "lies outside the image");
  ExpectInvalid(DocWithAnnotation(R"("bbox":[-10,0,10,5])"),
                "lies outside the image");
}

TEST_F(CocoReaderTest, KeepPolicyKeepsEveryBoxAsWritten) {
  CocoReadOptions keep;
  keep.out_of_image = BoxPolicy::kKeep;
  const auto d = ReadText(DocWithAnnotation(R"("bbox":[64,-3,5,5])"), keep);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_DOUBLE_EQ(d->annotations[0].bbox.x, 64);
  EXPECT_DOUBLE_EQ(d->annotations[0].bbox.y, -3);
  EXPECT_FALSE(d->annotations[0].file_bbox.has_value());
  EXPECT_DOUBLE_EQ(d->annotations[0].area, 25);
  // Everything else is checked as under the other policies.
  const auto negative = ReadText(DocWithAnnotation(R"("bbox":[1,2,-3,4])"), keep);
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find(
                "annotations[0].bbox: width and height must be >= 0"),
            std::string::npos)
      << negative.status();
}

TEST_F(CocoReaderTest, RejectPolicyRefusesBoxesBeyondTheImage) {
  CocoReadOptions reject;
  reject.out_of_image = BoxPolicy::kReject;
  const auto edge =
      ReadText(DocWithAnnotation(R"("bbox":[0,0,64,48])"), reject);
  EXPECT_TRUE(edge.ok()) << edge.status();
  const auto d = ReadText(DocWithAnnotation(R"("bbox":[60,0,5,5])"), reject);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      d.status().message().find("annotations[0].bbox: box [60, 0, 5, 5] of "
                                "image 7 (64x48) extends beyond the image"),
      std::string::npos)
      << d.status();
}

TEST_F(CocoReaderTest, LoadCocoSplitResolvesPathsAndGroupsBoxes) {
  WriteText(dir_.Path("imgs/a.png"), "x");
  WriteText(dir_.Path("imgs/sub/b.png"), "x");
  WriteText(dir_.Path("imgs/c.png"), "x");
  WriteText(dir_.Path("ann.json"), ValidDoc());
  const auto split = LoadCocoSplit(dir_.Path("ann.json"), dir_.Path("imgs"));
  ASSERT_TRUE(split.ok()) << split.status();
  ASSERT_EQ(split->records.size(), 3u);
  const ImageRecord& r0 = split->records[0];
  EXPECT_EQ(r0.image_id, 7);
  EXPECT_EQ(r0.path, dir_.Path("imgs/a.png"));
  EXPECT_EQ(r0.width, 64);
  EXPECT_EQ(r0.height, 48);
  ASSERT_EQ(r0.objects.size(), 2u);
  EXPECT_EQ(r0.objects[0].class_index, 1);  // category 9
  EXPECT_DOUBLE_EQ(r0.objects[0].box.h, 20);
  EXPECT_EQ(r0.objects[1].class_index, 0);  // category 2
  EXPECT_EQ(split->records[1].path, dir_.Path("imgs/sub/b.png"));
  ASSERT_EQ(split->records[1].objects.size(), 1u);
  EXPECT_TRUE(split->records[1].objects[0].iscrowd);
  EXPECT_TRUE(split->records[2].objects.empty());  // an image without objects
  EXPECT_EQ(split->dataset.annotations.size(), 3u);
}

TEST_F(CocoReaderTest, ConfinedFileNamesStayBeneathTheImageDirectory) {
  WriteText(dir_.Path("imgs/a.png"), "x");
  WriteText(dir_.Path("imgs/sub/b.png"), "x");
  WriteText(dir_.Path("imgs/c.png"), "x");
  WriteText(dir_.Path("secret.png"), "x");
  CocoReadOptions confined;
  confined.file_names_inside_image_dir = true;
  WriteText(dir_.Path("ann.json"), ValidDoc());
  EXPECT_TRUE(LoadCocoSplit(dir_.Path("ann.json"), dir_.Path("imgs"), confined).ok());
  for (const std::string& escape : {std::string("../secret.png"), std::string("sub/../../secret.png"),
                                    dir_.Path("secret.png")}) {
    std::string doc = ValidDoc();
    doc.replace(doc.find("\"c.png\""), 7, "\"" + escape + "\"");
    WriteText(dir_.Path("ann.json"), doc);
    EXPECT_TRUE(LoadCocoSplit(dir_.Path("ann.json"), dir_.Path("imgs")).ok()) << escape;
    const auto split = LoadCocoSplit(dir_.Path("ann.json"), dir_.Path("imgs"), confined);
    ASSERT_FALSE(split.ok()) << escape;
    EXPECT_EQ(split.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(split.status().message().find("images[2].file_name: \"" + escape +
                                            "\" leads out of the image directory"),
              std::string::npos)
        << split.status();
  }
}

TEST_F(CocoReaderTest, LoadCocoSplitReportsAMissingImage) {
  WriteText(dir_.Path("imgs/a.png"), "x");
  WriteText(dir_.Path("ann.json"), ValidDoc());
  const auto split = LoadCocoSplit(dir_.Path("ann.json"), dir_.Path("imgs"));
  ASSERT_FALSE(split.ok());
  EXPECT_EQ(split.status().code(), StatusCode::kNotFound);
  EXPECT_NE(split.status().message().find("images[1].file_name: image " +
                                          dir_.Path("imgs/sub/b.png") +
                                          " does not exist"),
            std::string::npos)
      << split.status();
}

}  // namespace
}  // namespace tern::detection
