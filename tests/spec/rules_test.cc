// spec/rules.h against tern.v1.JobSpec: every field of the message (and of
// its sub-messages) has a rule of the right type, enums list the proto's
// values, job.proto's comments state the table's ranges and defaults, a
// spec with every field set survives the trainer's JSON mapping, and at the
// edge of every range ternd (server/spec_validation.h) and tern-trainer
// (worker/trainer/spec.h) agree.
#include "spec/rules.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "server/spec_validation.h"
#include "tern/v1/job.pb.h"
#include "worker/trainer/spec.h"

namespace tern::spec {
namespace {

namespace pb = google::protobuf;
using pb::FieldDescriptor;

std::string Path(const std::string& prefix, const FieldDescriptor* f) {
  return prefix.empty() ? f->name() : prefix + "." + f->name();
}

// The rule type a proto field needs; nullopt for types the rules lack.
std::optional<Type> RuleType(const FieldDescriptor* f) {
  if (f->is_map()) return Type::kStringMap;
  if (f->is_repeated()) {
    return f->type() == FieldDescriptor::TYPE_INT32 ? std::optional(Type::kRepeatedInt32)
                                                    : std::nullopt;
  }
  switch (f->type()) {
    case FieldDescriptor::TYPE_STRING:
      return Type::kString;
    case FieldDescriptor::TYPE_BOOL:
      return Type::kBool;
    case FieldDescriptor::TYPE_INT32:
      return Type::kInt32;
    case FieldDescriptor::TYPE_UINT32:
      return Type::kUint32;
    case FieldDescriptor::TYPE_DOUBLE:
      return Type::kDouble;
    case FieldDescriptor::TYPE_ENUM:
      return Type::kEnum;
    case FieldDescriptor::TYPE_MESSAGE:
      return Type::kMessage;
    default:
      return std::nullopt;
  }
}

// Calls `visit(path, field)` for every field of `d` and its sub-messages.
template <typename Visit>
void ForEachField(const pb::Descriptor* d, const std::string& prefix, Visit visit) {
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    visit(Path(prefix, f), f);
    if (f->type() == FieldDescriptor::TYPE_MESSAGE && !f->is_map()) {
      ForEachField(f->message_type(), Path(prefix, f), visit);
    }
  }
}

TEST(RulesTest, EveryFieldOfJobSpecHasARuleOfItsType) {
  std::set<std::string> proto_paths;
  ForEachField(
      v1::JobSpec::descriptor(), "", [&](const std::string& path, const FieldDescriptor* f) {
        proto_paths.insert(path);
        const Field* rule = FindField(path);
        ASSERT_NE(rule, nullptr) << path << " has no rule in spec/rules.cc";
        const std::optional<Type> type = RuleType(f);
        ASSERT_TRUE(type.has_value()) << path << ": the rules have no type for " << f->type_name();
        EXPECT_EQ(rule->type, *type) << path;
        EXPECT_EQ(rule->presence, f->has_optional_keyword()) << path;
        if (f->type() == FieldDescriptor::TYPE_ENUM) {
          const pb::EnumDescriptor* e = f->enum_type();
          ASSERT_NE(rule->enum_type, nullptr) << path;
          EXPECT_EQ(rule->enum_type->name, e->name()) << path;
          ASSERT_EQ(rule->enum_type->values.size(), static_cast<size_t>(e->value_count())) << path;
          for (int i = 0; i < e->value_count(); ++i) {
            const pb::EnumValueDescriptor* value = e->FindValueByNumber(i);
            ASSERT_NE(value, nullptr) << path << ": numbers must be dense";
            EXPECT_EQ(rule->enum_type->values[i], value->name()) << path;
            EXPECT_EQ(value->name().rfind(rule->enum_type->prefix, 0), 0u) << value->name();
          }
        }
      });
  for (const Field& f : JobSpecFields()) {
    EXPECT_TRUE(proto_paths.count(f.path)) << f.path << " is in spec/rules.cc but not in JobSpec";
  }
}

// job.proto's comment above each field, lines joined; keyed by JSON path.
std::map<std::string, std::string> FieldComments() {
  std::ifstream in(TERN_JOB_PROTO);
  EXPECT_TRUE(in.good()) << TERN_JOB_PROTO;
  std::map<std::string, std::string> prefix_of = {{"JobSpec", ""}};
  ForEachField(v1::JobSpec::descriptor(), "",
               [&](const std::string& path, const FieldDescriptor* f) {
                 if (f->type() == FieldDescriptor::TYPE_MESSAGE && !f->is_map()) {
                   prefix_of[f->message_type()->name()] = path + ".";
                 }
               });
  const std::regex message_line(R"(^message (\w+) \{)");
  // A field, with or without options ("[(google.api.field_behavior) = ...]").
  const std::regex field_line(R"(^\s+(optional |repeated )?[\w<>, .]+ (\w+) = \d+( \[.*\])?;)");
  const std::regex comment_line(R"(^\s*// ?(.*)$)");
  std::map<std::string, std::string> out;
  std::string message, comment, line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, message_line)) {
      message = m[1];
      comment.clear();
    } else if (std::regex_match(line, m, comment_line)) {
      comment += (comment.empty() ? "" : " ") + m[1].str();
    } else {
      if (std::regex_search(line, m, field_line) && prefix_of.count(message)) {
        out[prefix_of[message] + m[2].str()] = comment;
      }
      comment.clear();
    }
  }
  return out;
}

// "10^9", "1e4", "-1000", "0.5".
double ParseNumber(const std::string& s) {
  const size_t caret = s.find('^');
  if (caret != std::string::npos) {
    return std::pow(std::stod(s.substr(0, caret)), std::stod(s.substr(caret + 1)));
  }
  return std::stod(s);
}

std::string LastComponent(const std::string& path) { return path.substr(path.rfind('.') + 1); }

TEST(RulesTest, ProtoCommentsStateTheRangesAndDefaults) {
  const std::map<std::string, std::string> comments = FieldComments();
  const std::regex range(R"(Range (?:of each: )?([\[(])([^,\])]+), ([^\])]+)([\])]))");
  const std::regex default_value(
      R"(Default (-?[0-9](?:[0-9.e^+-]*[0-9])?)|(-?[0-9][0-9.e^+-]*) \(default\))");
  for (const Field& f : JobSpecFields()) {
    ASSERT_TRUE(comments.count(f.path)) << f.path << ": no field line found in job.proto";
    const std::string& comment = comments.at(f.path);
    std::smatch m;
    const bool stated = std::regex_search(comment, m, range);
    const bool finite = f.bounds && std::isfinite(f.bounds->hi) && std::isfinite(f.bounds->lo);
    if (!finite) {
      EXPECT_FALSE(stated && !f.bounds) << f.path << ": job.proto states a range the rules lack";
    } else {
      ASSERT_TRUE(stated) << f.path << ": job.proto states no \"Range\" in: " << comment;
      const Bounds& b = *f.bounds;
      EXPECT_EQ(m[1] == "(", b.lo_open) << f.path << ": " << m[0];
      EXPECT_EQ(m[4] == ")", b.hi_open) << f.path << ": " << m[0];
      if (b.lo_field.empty()) {
        EXPECT_EQ(ParseNumber(m[2]), b.lo) << f.path << ": " << m[0];
      } else {
        EXPECT_EQ(m[2].str(), LastComponent(b.lo_field)) << f.path;
      }
      if (b.hi_field.empty()) {
        EXPECT_EQ(ParseNumber(m[3]), b.hi) << f.path << ": " << m[0];
      } else {
        EXPECT_EQ(m[3].str(), LastComponent(b.hi_field)) << f.path;
      }
    }
    if (f.default_number) {
      ASSERT_TRUE(std::regex_search(comment, m, default_value))
          << f.path << ": job.proto states no default in: " << comment;
      EXPECT_EQ(ParseNumber(m[1].matched ? m[1] : m[2]), *f.default_number) << f.path;
    }
  }
  EXPECT_NE(comments.at("dataset.path").find(kDefaultIdxPath), std::string::npos);
  for (const auto& [path, value] :
       {std::pair{"dataset.train_annotations", kDefaultTrainAnnotations},
        {"dataset.val_annotations", kDefaultValAnnotations},
        {"dataset.train_images", kDefaultTrainImages},
        {"dataset.val_images", kDefaultValImages}}) {
    EXPECT_NE(comments.at(path).find(std::string("Empty: \"") + value + "\""), std::string::npos)
        << path;
  }
}

// The spec's JSON as tern-agent writes it for the trainer.
std::string AgentJson(const v1::JobSpec& spec) {
  pb::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string json;
  EXPECT_TRUE(pb::util::MessageToJsonString(spec, &json, print).ok());
  return json;
}

// Valid, with every field set to a value other than its default.
v1::JobSpec FullValidSpec() {
  v1::JobSpec spec;
  spec.set_name("full");
  spec.set_owner("alice");
  (*spec.mutable_labels())["team"] = "vision";
  spec.set_priority(7);
  spec.set_max_restarts(2);
  spec.set_task(v1::TASK_CLASSIFICATION);
  spec.set_collective_timeout_seconds(120);
  v1::ModelSpec* model = spec.mutable_model();
  model->set_arch("resnet18");
  model->set_head("centernet");
  model->set_width_multiplier(0.5);
  model->set_init_from("/ckpt/fp.tern");
  model->set_init_from_names("torchvision");
  model->set_max_detections(50);
  v1::DatasetSpec* data = spec.mutable_dataset();
  data->set_kind(v1::DATASET_IMAGE_FOLDER);
  data->set_path("/data/folder");
  data->set_val_fraction(0.1);
  data->set_train_annotations("a/train.json");
  data->set_val_annotations("a/val.json");
  data->set_train_images("t");
  data->set_val_images("v");
  data->set_augment(false);
  data->set_num_workers(4);
  data->set_input_size(128);
  data->set_max_train_examples(1000);
  data->set_max_eval_examples(200);
  v1::QuantizationSpec* q = spec.mutable_quantization();
  q->set_method(v1::METHOD_HLA_NO_RESCALE);
  q->set_granularity(v1::GRANULARITY_CHANNEL);
  q->set_keep_first_fp(false);
  q->set_keep_last_fp(false);
  q->set_twn_delta_factor(0.75);
  q->set_lat_iterations(5);
  q->set_lat_epsilon(1e-6);
  q->set_second_moment_decay(0.99);
  q->set_ttq_threshold(0.1);
  q->set_lambda_max(0.02);
  q->set_reg_warmup_fraction(0.2);
  q->set_reg_fraction(0.25);
  q->set_beta(0.25);
  q->set_normalize(false);
  q->set_kappa_start(4.0);
  q->set_kappa_end(40.0);
  q->set_clip(1.5);
  q->set_packing(v1::PACKING_BASE3);
  q->set_bn_recalibration_batches(16);
  q->set_recalibrate_bn_at_switch(true);
  q->set_recalibrate_bn_before_export(true);
  v1::OptimizationSpec* o = spec.mutable_optimization();
  o->set_optimizer(v1::OPTIMIZER_ADAMW);
  o->set_lr(0.003);
  o->set_momentum(0.8);
  o->set_nesterov(false);
  o->set_weight_decay(0.05);
  o->set_adam_beta1(0.85);
  o->set_adam_beta2(0.99);
  o->set_adam_epsilon(1e-7);
  o->set_lr_schedule(v1::SCHEDULE_STEP);
  o->set_warmup_epochs(0.5);
  o->add_step_milestones(10);
  o->add_step_milestones(20);
  o->set_step_gamma(0.2);
  o->set_batch_size(256);
  o->set_epochs(30);
  o->set_seed(4294967295u);
  o->set_deterministic(true);
  o->set_bf16(false);
  o->set_channels_last(false);
  o->set_micro_batches(1);  // the default, but cuda_graph needs it
  o->set_cuda_graph(true);
  v1::ResourceSpec* r = spec.mutable_resources();
  r->set_ranks(4);
  r->set_device_kind(v1::DEVICE_CUDA);
  r->set_threads_per_rank(2);
  spec.mutable_checkpoint()->set_every_steps(100);
  spec.mutable_checkpoint()->set_directory("/shared/ckpt/job-1");
  spec.mutable_events()->set_progress_every_steps(10);
  return spec;
}

// Fields only ternd reads: the trainer need not keep them.
const std::set<std::string> kServerOnly = {"owner", "labels", "priority", "max_restarts"};

TEST(RulesTest, TheTrainerKeepsEveryFieldItReads) {
  const v1::JobSpec full = FullValidSpec();
  std::vector<std::string> unset;
  ForEachField(
      v1::JobSpec::descriptor(), "", [&](const std::string& path, const FieldDescriptor* f) {
        // Walk `full` along the path to see that the field is set.
        const pb::Message* msg = &full;
        std::string rest = path;
        for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
          msg = &msg->GetReflection()->GetMessage(
              *msg, msg->GetDescriptor()->FindFieldByName(rest.substr(0, dot)));
        }
        const bool set = f->is_repeated() ? msg->GetReflection()->FieldSize(*msg, f) > 0
                                          : msg->GetReflection()->HasField(*msg, f);
        if (!set) unset.push_back(path);
      });
  EXPECT_EQ(unset, std::vector<std::string>{}) << "FullValidSpec must set every field";
  ASSERT_TRUE(server::ValidateJobSpec(full).ok()) << server::ValidateJobSpec(full);
  const StatusOr<trainer::TrainerSpec> parsed = trainer::ParseTrainerSpec(AgentJson(full));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  // Back to a JobSpec: what the trainer understood is what was sent.
  v1::JobSpec back;
  pb::util::JsonParseOptions options;
  ASSERT_TRUE(
      pb::util::JsonStringToMessage(trainer::ToJobSpecJson(*parsed).dump(), &back, options).ok());
  v1::JobSpec want = full;
  for (const std::string& field : kServerOnly) {
    want.GetReflection()->ClearField(&want, want.GetDescriptor()->FindFieldByName(field));
  }
  want.mutable_optimization()->clear_micro_batches();  // the default is left out
  std::string diff;
  pb::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(want, back)) << diff;
}

// Sets the number at `path` (a repeated field gets one element).
void SetNumber(v1::JobSpec* spec, const std::string& path, double value) {
  pb::Message* msg = spec;
  std::string rest = path;
  for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
    msg = msg->GetReflection()->MutableMessage(
        msg, msg->GetDescriptor()->FindFieldByName(rest.substr(0, dot)));
  }
  const FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(rest);
  const pb::Reflection* r = msg->GetReflection();
  if (f->is_repeated()) {
    r->ClearField(msg, f);
    r->AddInt32(msg, f, static_cast<int32_t>(value));
  } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_INT32) {
    r->SetInt32(msg, f, static_cast<int32_t>(value));
  } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_UINT32) {
    r->SetUInt32(msg, f, static_cast<uint32_t>(value));
  } else {
    r->SetDouble(msg, f, value);
  }
}

TEST(RulesTest, TernAndTheTrainerAgreeAtTheEdgeOfEveryRange) {
  v1::JobSpec base;
  base.mutable_optimization()->set_epochs(10);
  int checked = 0;
  for (const Field& f : JobSpecFields()) {
    if (!f.bounds) continue;
    const Bounds& b = *f.bounds;
    const bool integral = f.type != Type::kDouble;
    // The ends, resolved against `base` (epochs 10, kappa_start's default 5).
    const double lo = b.lo_field.empty() ? b.lo : 5;
    const double hi = b.hi_field.empty() ? b.hi : 10;
    const auto step = [&](double v, double toward) {
      return integral ? v + (toward > v ? 1 : -1) : std::nextafter(v, toward);
    };
    std::vector<std::pair<double, bool>> cases = {// value, inside the range
                                                  {b.lo_open ? step(lo, hi) : lo, true},
                                                  {b.lo_open ? lo : step(lo, -HUGE_VAL), false}};
    if (std::isfinite(hi)) {
      cases.push_back({b.hi_open ? step(hi, lo) : hi, true});
      cases.push_back({b.hi_open ? hi : step(hi, HUGE_VAL), false});
    }
    for (const auto& [value, inside] : cases) {
      if (f.type == Type::kUint32 && value < 0) continue;
      v1::JobSpec spec = base;
      SetNumber(&spec, f.path, value);
      // Keep the cross-field rules out of the way.
      if (f.path == "resources.ranks" || f.path == "optimization.micro_batches") {
        spec.mutable_optimization()->set_batch_size(
            static_cast<int32_t>(std::clamp(value, 1.0, 65536.0)));
      }
      const Status ternd = server::ValidateJobSpec(spec, "");
      const StatusOr<trainer::TrainerSpec> trainer = trainer::ParseTrainerSpec(AgentJson(spec));
      SCOPED_TRACE(f.path + " = " + std::to_string(value));
      EXPECT_EQ(ternd.ok(), inside) << ternd;
      EXPECT_EQ(trainer.ok(), inside) << trainer.status();
      if (!inside) {
        EXPECT_EQ(ternd.message().rfind(f.path, 0), 0u) << ternd;
        EXPECT_EQ(trainer.status().message(), ternd.message());
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace tern::spec
