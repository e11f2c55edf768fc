#include "worker/detection/coco.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "common/file_util.h"
#include "common/utf8.h"
#include "worker/detection/json_checks.h"

namespace tern::detection {
namespace {

using Json = nlohmann::json;
using internal::Checker;

constexpr int kMaxImageSide = 1 << 30;

std::string FormatBox(double x, double y, double w, double h) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "[%g, %g, %g, %g]", x, y, w, h);
  return buf;
}

Status ParseImages(const Json& root, const Checker& c, CocoDataset* out,
                   std::unordered_map<int64_t, size_t>* index) {
  TERN_ASSIGN_OR_RETURN(const Json* images, c.Array(root, "", "images"));
  out->images.reserve(images->size());
  for (size_t i = 0; i < images->size(); ++i) {
    const Json& img = (*images)[i];
    const std::string path = Checker::Index("images", i);
    if (!img.is_object()) return c.Invalid(path, "expected an object");
    CocoImage image;
    TERN_ASSIGN_OR_RETURN(image.id, c.Int(img, path, "id"));
    TERN_ASSIGN_OR_RETURN(image.file_name, c.String(img, path, "file_name"));
    if (image.file_name.empty()) {
      return c.Invalid(path + ".file_name", "must not be empty");
    }
    TERN_ASSIGN_OR_RETURN(const int64_t width, c.Int(img, path, "width"));
    TERN_ASSIGN_OR_RETURN(const int64_t height, c.Int(img, path, "height"));
    if (width < 1 || width > kMaxImageSide) {
      return c.Invalid(path + ".width",
                       "must be in [1, 2^30], got " + std::to_string(width));
    }
    if (height < 1 || height > kMaxImageSide) {
      return c.Invalid(path + ".height",
                       "must be in [1, 2^30], got " + std::to_string(height));
    }
    image.width = static_cast<int>(width);
    image.height = static_cast<int>(height);
    if (!index->emplace(image.id, i).second) {
      return c.Invalid(path + ".id",
                       "duplicate image id " + std::to_string(image.id));
    }
    out->images.push_back(std::move(image));
  }
  return OkStatus();
}

Status ParseCategories(const Json& root, const Checker& c, CocoDataset* out) {
  TERN_ASSIGN_OR_RETURN(const Json* cats, c.Array(root, "", "categories"));
  std::unordered_map<int64_t, size_t> seen;
  for (size_t i = 0; i < cats->size(); ++i) {
    const Json& cat = (*cats)[i];
    const std::string path = Checker::Index("categories", i);
    if (!cat.is_object()) return c.Invalid(path, "expected an object");
    CocoCategory category;
    TERN_ASSIGN_OR_RETURN(category.id, c.Int(cat, path, "id"));
    TERN_ASSIGN_OR_RETURN(category.name, c.String(cat, path, "name"));
    if (!seen.emplace(category.id, i).second) {
      return c.Invalid(path + ".id",
                       "duplicate category id " + std::to_string(category.id));
    }
    out->categories.push_back(std::move(category));
  }
  std::sort(
      out->categories.begin(), out->categories.end(),
      [](const CocoCategory& a, const CocoCategory& b) { return a.id < b.id; });
  return OkStatus();
}

// Checks the box of annotations[i] against its image and applies `policy`.
Status FitBox(const Checker& c, const std::string& path, const CocoImage& image,
              BoxPolicy policy, BoxXywh* box) {
  const double w_img = image.width;
  const double h_img = image.height;
  const double x1 = box->x + box->w;
  const double y1 = box->y + box->h;
  const std::string where = FormatBox(box->x, box->y, box->w, box->h) +
                            " of image " + std::to_string(image.id) + " (" +
                            std::to_string(image.width) + "x" +
                            std::to_string(image.height) + ")";
  if (policy == BoxPolicy::kReject) {
    if (box->x < 0 || box->y < 0 || x1 > w_img || y1 > h_img) {
      return c.Invalid(path, "box " + where + " extends beyond the image");
    }
    return OkStatus();
  }
  if (policy == BoxPolicy::kKeep) return OkStatus();
  if (box->x >= w_img || box->y >= h_img || x1 <= 0 || y1 <= 0) {
    return c.Invalid(path, "box " + where + " lies outside the image");
  }
  const double cx0 = std::max(box->x, 0.0);
  const double cy0 = std::max(box->y, 0.0);
  *box =
      BoxXywh{cx0, cy0, std::min(x1, w_img) - cx0, std::min(y1, h_img) - cy0};
  return OkStatus();
}

Status ParseAnnotations(const Json& root, const Checker& c,
                        const std::unordered_map<int64_t, size_t>& image_index,
                        const CocoReadOptions& options, CocoDataset* out) {
  TERN_ASSIGN_OR_RETURN(const Json* anns, c.Array(root, "", "annotations"));
  out->annotations.reserve(anns->size());
  std::unordered_map<int64_t, size_t> seen;
  for (size_t i = 0; i < anns->size(); ++i) {
    const Json& a = (*anns)[i];
    const std::string path = Checker::Index("annotations", i);
    if (!a.is_object()) return c.Invalid(path, "expected an object");
    CocoAnnotation ann;
    TERN_ASSIGN_OR_RETURN(ann.id, c.Int(a, path, "id"));
    if (!seen.emplace(ann.id, i).second) {
      return c.Invalid(path + ".id",
                       "duplicate annotation id " + std::to_string(ann.id));
    }
    TERN_ASSIGN_OR_RETURN(ann.image_id, c.Int(a, path, "image_id"));
    const auto img = image_index.find(ann.image_id);
    if (img == image_index.end()) {
      return c.Invalid(path + ".image_id",
                       "unknown image id " + std::to_string(ann.image_id));
    }
    TERN_ASSIGN_OR_RETURN(ann.category_id, c.Int(a, path, "category_id"));
    if (out->ClassIndex(ann.category_id) < 0) {
      return c.Invalid(
          path + ".category_id",
          "unknown category id " + std::to_string(ann.category_id));
    }

    const std::string bbox_path = path + ".bbox";
    double v[4];
    TERN_RETURN_IF_ERROR(c.Box(a, path, "bbox", v));
    ann.bbox = BoxXywh{v[0], v[1], v[2], v[3]};
    if (ann.bbox.w < 0 || ann.bbox.h < 0) {
      return c.Invalid(bbox_path, "width and height must be >= 0, got " +
                                      FormatBox(v[0], v[1], v[2], v[3]));
    }
    const BoxXywh file_bbox = ann.bbox;
    TERN_RETURN_IF_ERROR(FitBox(c, bbox_path, out->images[img->second],
                                options.out_of_image, &ann.bbox));
    if (ann.bbox.x != file_bbox.x || ann.bbox.y != file_bbox.y ||
        ann.bbox.w != file_bbox.w || ann.bbox.h != file_bbox.h) {
      ann.file_bbox = file_bbox;
    }

    if (const auto it = a.find("area"); it != a.end()) {
      TERN_ASSIGN_OR_RETURN(ann.area, c.Number(*it, path + ".area"));
      if (ann.area < 0) return c.Invalid(path + ".area", "must be >= 0");
    } else {
      ann.area = ann.bbox.w * ann.bbox.h;
    }
    if (const auto it = a.find("iscrowd"); it != a.end()) {
      if (it->is_boolean()) {
        ann.iscrowd = it->get<bool>();
      } else if (it->is_number_integer() &&
                 (it->get<int64_t>() == 0 || it->get<int64_t>() == 1)) {
        ann.iscrowd = it->get<int64_t>() == 1;
      } else {
        return c.Invalid(path + ".iscrowd", "expected 0 or 1");
      }
    }
    out->annotations.push_back(ann);
  }
  return OkStatus();
}

}  // namespace

int CocoDataset::ClassIndex(int64_t category_id) const {
  const auto it = std::lower_bound(
      categories.begin(), categories.end(), category_id,
      [](const CocoCategory& c, int64_t id) { return c.id < id; });
  if (it == categories.end() || it->id != category_id) return -1;
  return static_cast<int>(it - categories.begin());
}

StatusOr<CocoDataset> ParseCocoJson(std::string_view json,
                                    const std::string& source,
                                    const CocoReadOptions& options) {
  TERN_ASSIGN_OR_RETURN(const Json root, internal::ParseJson(json, source));
  const Checker c(source);
  if (!root.is_object()) {
    return c.Invalid(
        "(root)", std::string("expected an object, got ") + root.type_name());
  }
  CocoDataset out;
  std::unordered_map<int64_t, size_t> image_index;
  TERN_RETURN_IF_ERROR(ParseImages(root, c, &out, &image_index));
  TERN_RETURN_IF_ERROR(ParseCategories(root, c, &out));
  TERN_RETURN_IF_ERROR(ParseAnnotations(root, c, image_index, options, &out));
  return out;
}

StatusOr<CocoDataset> ReadCocoFile(const std::string& path,
                                   const CocoReadOptions& options) {
  TERN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseCocoJson(text, path, options);
}

std::string ToCocoJson(const CocoDataset& dataset,
                       const std::string& description) {
  Json images = Json::array();
  for (const CocoImage& img : dataset.images) {
    images.push_back({{"id", img.id},
                      {"file_name", img.file_name},
                      {"width", img.width},
                      {"height", img.height}});
  }
  Json categories = Json::array();
  for (const CocoCategory& cat : dataset.categories) {
    categories.push_back({{"id", cat.id}, {"name", cat.name}});
  }
  Json annotations = Json::array();
  for (const CocoAnnotation& a : dataset.annotations) {
    const BoxXywh& b = a.file_bbox.value_or(a.bbox);
    annotations.push_back({{"id", a.id},
                           {"image_id", a.image_id},
                           {"category_id", a.category_id},
                           {"bbox", {b.x, b.y, b.w, b.h}},
                           {"area", a.area},
                           {"iscrowd", a.iscrowd ? 1 : 0}});
  }
  // "info" and "licenses" only because some pycocotools versions require them.
  Json root = {{"info", {{"description", description}}},
               {"licenses", Json::array()},
               {"images", std::move(images)},
               {"categories", std::move(categories)},
               {"annotations", std::move(annotations)}};
  return root.dump() + "\n";
}

StatusOr<CocoSplit> LoadCocoSplit(const std::string& annotations_path,
                                  const std::string& image_dir,
                                  const CocoReadOptions& options) {
  namespace fs = std::filesystem;
  CocoSplit split;
  TERN_ASSIGN_OR_RETURN(split.dataset, ReadCocoFile(annotations_path, options));
  const CocoDataset& d = split.dataset;
  std::unordered_map<int64_t, size_t> image_index;
  split.records.reserve(d.images.size());
  for (size_t i = 0; i < d.images.size(); ++i) {
    const CocoImage& img = d.images[i];
    ImageRecord rec;
    rec.image_id = img.id;
    const fs::path name(img.file_name);
    if (options.file_names_inside_image_dir) {
      bool escapes = name.is_absolute();
      for (const fs::path& part : name) escapes = escapes || part == "..";
      if (escapes) {
        return InvalidArgumentError(annotations_path + ": " + Checker::Index("images", i) +
                                    ".file_name: " + Quoted(img.file_name) +
                                    " leads out of the image directory (this job may read "
                                    "only beneath the paths its spec names)");
      }
    }
    rec.path = name.is_absolute() ? name.string()
                                  : (fs::path(image_dir) / name).string();
    std::error_code ec;
    if (!fs::is_regular_file(rec.path, ec)) {
      return NotFoundError(annotations_path + ": " +
                           Checker::Index("images", i) + ".file_name: image " +
                           rec.path + " does not exist");
    }
    rec.width = img.width;
    rec.height = img.height;
    image_index.emplace(img.id, i);
    split.records.push_back(std::move(rec));
  }
  for (const CocoAnnotation& a : d.annotations) {
    split.records[image_index.at(a.image_id)].objects.push_back(
        ObjectBox{a.bbox, d.ClassIndex(a.category_id), a.iscrowd});
  }
  return split;
}

}  // namespace tern::detection
