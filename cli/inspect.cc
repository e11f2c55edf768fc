#include "cli/inspect.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "cli/ternctl.h"
#include "quant/artifact.h"
#include "quant/options.h"

namespace tern::cli {
namespace {

using nlohmann::json;

std::string Shape(const std::vector<int64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
  return out.empty() ? "scalar" : out;
}

std::string Grouped(int64_t n) {  // 1234567 -> "1,234,567"
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

double Mean(const std::vector<float>& values) {
  double sum = 0;
  for (float v : values) sum += v;
  return values.empty() ? 0 : sum / static_cast<double>(values.size());
}

struct TensorSummary {
  const quant::ArtifactTensor* tensor;
  int64_t zeros = 0;  // ternary: codes equal to 0
};

// Metadata written by tern-trainer (task, method, job, steps), if present.
std::string Trained(const json& metadata) {
  std::string out;
  auto add = [&](const char* key, const char* label) {
    if (!metadata.contains(key)) return;
    const json& v = metadata.at(key);
    out += (out.empty() ? "" : ", ") + std::string(label) +
           (v.is_string() ? v.get<std::string>() : v.dump());
  };
  add("task", "task ");
  add("method", "method ");
  add("job", "job ");
  add("steps", "steps ");
  return out;
}

}  // namespace

int InspectArtifactCommand(const std::string& path, bool as_json, std::ostream& out,
                           std::ostream& err) {
  StatusOr<quant::Artifact> read = quant::ReadArtifactFile(path);
  if (!read.ok()) {
    err << "ternctl inspect: " << read.status().message() << "\n";
    return ExitCodeFor(read.status().code());
  }
  const quant::Artifact& artifact = *read;
  std::error_code ec;
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  // The reader checked both are JSON objects.
  const json architecture = json::parse(artifact.architecture, nullptr, false);
  const json metadata = json::parse(artifact.metadata, nullptr, false);

  std::vector<TensorSummary> tensors;
  const int64_t ternary_weights = artifact.TernaryWeights();
  int64_t ternary_zeros = 0, float_values = 0, ternary_tensors = 0;
  std::set<std::string> granularities;
  for (const quant::ArtifactTensor& t : artifact.tensors) {
    TensorSummary s{&t};
    if (t.kind == quant::ArtifactTensor::Kind::kTernary) {
      s.zeros = std::count(t.codes.begin(), t.codes.end(), int8_t{0});
      ternary_zeros += s.zeros;
      ++ternary_tensors;
      granularities.insert(quant::GranularityName(t.granularity));
    } else {
      float_values += t.numel();
    }
    tensors.push_back(s);
  }
  const int64_t fp32_bytes = 4 * (ternary_weights + float_values);
  const double sparsity =
      ternary_weights > 0 ? static_cast<double>(ternary_zeros) / ternary_weights : 0;

  if (as_json) {
    json j = {{"path", path},
              {"bytes", file_bytes},
              {"packing", quant::PackingName(artifact.packing)},
              {"architecture", architecture},
              {"metadata", metadata},
              {"ternary_weights", ternary_weights},
              {"ternary_tensors", ternary_tensors},
              {"bits_per_ternary_weight", artifact.BitsPerTernaryWeight()},
              {"ternary_sparsity", sparsity},
              {"float_values", float_values},
              {"float32_bytes", fp32_bytes},
              {"tensors", json::array()}};
    for (const TensorSummary& s : tensors) {
      const quant::ArtifactTensor& t = *s.tensor;
      json row = {{"name", t.name}, {"shape", t.shape}};
      if (t.kind == quant::ArtifactTensor::Kind::kTernary) {
        row["kind"] = "ternary";
        row["granularity"] = quant::GranularityName(t.granularity);
        row["sparsity"] = static_cast<double>(s.zeros) / static_cast<double>(t.numel());
        row["positive_scale_mean"] = Mean(t.pos_scale);
        row["negative_scale_mean"] = Mean(t.neg_scale);
      } else {
        row["kind"] = "float32";
      }
      j["tensors"].push_back(std::move(row));
    }
    out << j.dump(2) << "\n";
    return kExitOk;
  }

  char line[512];
  out << path << ": " << Grouped(file_bytes) << " bytes, codes packed "
      << quant::PackingName(artifact.packing) << "\n";
  out << "model: " << (architecture.is_object() ? architecture.dump() : artifact.architecture)
      << "\n";
  const std::string trained = metadata.is_object() ? Trained(metadata) : "";
  out << "trained: " << (trained.empty() ? artifact.metadata : trained) << "\n";
  std::string scales;
  for (const std::string& g : granularities) scales += (scales.empty() ? "" : " and ") + g;
  std::snprintf(line, sizeof(line),
                "ternary: %s weights in %lld tensors, %.2f bits each (codes; scales per %s), "
                "%.1f%% zeros\n",
                Grouped(ternary_weights).c_str(), static_cast<long long>(ternary_tensors),
                artifact.BitsPerTernaryWeight(), scales.empty() ? "-" : scales.c_str(),
                100 * sparsity);
  out << line;
  out << "float32: " << Grouped(float_values) << " values in "
      << tensors.size() - static_cast<size_t>(ternary_tensors) << " tensors\n";
  if (file_bytes > 0) {
    std::snprintf(line, sizeof(line), "size: %s bytes; the same tensors in float32: %s bytes "
                  "(%.1fx the file)\n",
                  Grouped(file_bytes).c_str(), Grouped(fp32_bytes).c_str(),
                  static_cast<double>(fp32_bytes) / static_cast<double>(file_bytes));
    out << line;
  }
  // Rows: the ternary tensors and the float32 weights of 2+ dimensions (the
  // layers kept FP); BatchNorm parameters, statistics and biases in one line.
  auto listed = [](const quant::ArtifactTensor& t) {
    return t.kind == quant::ArtifactTensor::Kind::kTernary || t.shape.size() >= 2;
  };
  size_t name_width = 6;
  int64_t other_tensors = 0, other_values = 0;
  for (const TensorSummary& s : tensors) {
    if (listed(*s.tensor)) {
      name_width = std::max(name_width, std::min<size_t>(s.tensor->name.size(), 80));
    } else {
      ++other_tensors;
      other_values += s.tensor->numel();
    }
  }
  std::snprintf(line, sizeof(line), "\n%-*s  %-7s  %-14s  %6s  %9s  %9s\n",
                static_cast<int>(name_width), "tensor", "kind", "shape", "zeros", "scale +",
                "scale -");
  out << line;
  for (const TensorSummary& s : tensors) {
    const quant::ArtifactTensor& t = *s.tensor;
    if (!listed(t)) continue;
    if (t.kind == quant::ArtifactTensor::Kind::kTernary) {
      std::snprintf(line, sizeof(line), "%-*s  %-7s  %-14s  %5.1f%%  %9.4g  %9.4g\n",
                    static_cast<int>(name_width), t.name.c_str(), "ternary", Shape(t.shape).c_str(),
                    100.0 * static_cast<double>(s.zeros) / static_cast<double>(t.numel()),
                    Mean(t.pos_scale), Mean(t.neg_scale));
    } else {
      std::snprintf(line, sizeof(line), "%-*s  %-7s  %-14s  %6s  %9s  %9s\n",
                    static_cast<int>(name_width), t.name.c_str(), "float32",
                    Shape(t.shape).c_str(), "-", "-", "-");
    }
    out << line;
  }
  if (other_tensors > 0) {
    out << "and " << other_tensors << " float32 tensors of at most one dimension (BatchNorm, "
        << "biases): " << Grouped(other_values) << " values\n";
  }
  return kExitOk;
}

}  // namespace tern::cli
