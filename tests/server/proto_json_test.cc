// ProtoToJson equals parsing what protobuf's MessageToJsonString prints
// (preserve_proto_field_names), on messages filled at random by reflection:
// tern's JobSpec (what SubmitJob checks), JobResult and TrainerEvent, and a
// message built at run time with every field kind (all scalar types, bytes,
// open enums with unknown values, proto3 optional, repeated, maps with
// integer and bool keys, nested messages), with NaN, infinities and -0.0.
// Messages holding a well-known type are left to protobuf (nullopt).
#include "server/proto_json.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <cctype>
#include <limits>
#include <memory>
#include <random>
#include <string>

#include "tern/v1/job.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::server {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

class Filler {
 public:
  explicit Filler(uint64_t seed) : rng_(seed) {}

  void Fill(Message* m, int depth) {
    const google::protobuf::Descriptor* d = m->GetDescriptor();
    const Reflection* r = m->GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->message_type() != nullptr &&
          (f->message_type()->file()->package() == "google.protobuf" || depth > 3)) {
        continue;  // well-known types: protobuf's own JSON forms
      }
      if (Chance(0.3)) continue;  // absent
      if (f->is_repeated()) {
        const int n = static_cast<int>(rng_() % 4);
        for (int k = 0; k < n; ++k) {
          if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
            Fill(r->AddMessage(m, f), depth + 1);
          } else {
            Add(m, r, f);
          }
        }
      } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        Fill(r->MutableMessage(m, f), depth + 1);
      } else {
        Set(m, r, f);
      }
    }
  }

 private:
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  int64_t Int() {
    switch (rng_() % 5) {
      case 0:
        return 0;
      case 1:
        return std::numeric_limits<int64_t>::min();
      case 2:
        return std::numeric_limits<int64_t>::max();
      default:
        return static_cast<int64_t>(rng_()) >> (rng_() % 60);
    }
  }
  double Double() {
    switch (rng_() % 8) {
      case 0:
        return 0.0;
      case 1:
        return -0.0;
      case 2:
        return std::numeric_limits<double>::quiet_NaN();
      case 3:
        return -std::numeric_limits<double>::infinity();
      case 4:
        return 1e300;
      case 5:
        return 0.1;
      default:
        return std::normal_distribution<double>(0, 1e3)(rng_);
    }
  }
  std::string String() {
    static const char* kPieces[] = {"", "a", "λ", "\"quoted\"", "tab\t", "\xF0\x9F\x98\x80", "x y"};
    std::string s;
    for (int i = static_cast<int>(rng_() % 3); i > 0; --i) s += kPieces[rng_() % 7];
    return s;
  }
  std::string Bytes() {
    std::string s(rng_() % 6, '\0');
    for (char& c : s) c = static_cast<char>(rng_() & 0xff);
    return s;
  }
  int EnumValue(const FieldDescriptor* f) {
    const auto* e = f->enum_type();
    if (f->file()->syntax() == google::protobuf::FileDescriptor::SYNTAX_PROTO3 && Chance(0.2)) {
      return static_cast<int>(1000 + rng_() % 5);  // open enum: an unknown value
    }
    return e->value(static_cast<int>(rng_() % e->value_count()))->number();
  }
  void Set(Message* m, const Reflection* r, const FieldDescriptor* f) {
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(m, f, static_cast<int32_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(m, f, static_cast<uint32_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(m, f, Int());
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(m, f, static_cast<uint64_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(m, f, Double());
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(m, f, static_cast<float>(Double()));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(m, f, Chance(0.5));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnumValue(m, f, EnumValue(f));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        r->SetString(m, f, f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : String());
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
  void Add(Message* m, const Reflection* r, const FieldDescriptor* f) {
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->AddInt32(m, f, static_cast<int32_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->AddUInt32(m, f, static_cast<uint32_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->AddInt64(m, f, Int());
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->AddUInt64(m, f, static_cast<uint64_t>(Int()));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->AddDouble(m, f, Double());
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->AddFloat(m, f, static_cast<float>(Double()));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->AddBool(m, f, Chance(0.5));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->AddEnumValue(m, f, EnumValue(f));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        r->AddString(m, f, f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : String());
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
  std::mt19937_64 rng_;
};

// What protobuf prints, parsed.
nlohmann::json Printed(const Message& m) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string text;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(m, &text, print).ok());
  return nlohmann::json::parse(text);
}

void ExpectSameAsProtobuf(Message* prototype, int cases) {
  for (int seed = 0; seed < cases; ++seed) {
    std::unique_ptr<Message> m(prototype->New());
    Filler(static_cast<uint64_t>(seed)).Fill(m.get(), 0);
    const std::optional<nlohmann::json> ours = ProtoToJson(*m);
    ASSERT_TRUE(ours.has_value()) << m->DebugString();
    const nlohmann::json printed = Printed(*m);
    ASSERT_EQ(*ours, printed) << "seed " << seed << ": differs by "
                              << nlohmann::json::diff(*ours, printed).dump();
  }
}

TEST(ProtoJsonTest, TernMessagesMatchProtobufsPrinter) {
  v1::JobSpec spec;
  ExpectSameAsProtobuf(&spec, 300);
  v1::JobResult result;
  ExpectSameAsProtobuf(&result, 200);
  v1::TrainerEvent event;  // its `time` (a Timestamp) is left unset
  ExpectSameAsProtobuf(&event, 200);
}

// A proto3 file built at run time: every field kind protobuf's JSON knows
// (except the well-known types).
TEST(ProtoJsonTest, EveryFieldKindMatchesProtobufsPrinter) {
  google::protobuf::FileDescriptorProto file;
  file.set_name("proto_json_test_all.proto");
  file.set_package("tern.test");
  file.set_syntax("proto3");
  auto* color = file.add_enum_type();
  color->set_name("Color");
  for (const auto& [name, number] : {std::pair{"COLOR_UNSPECIFIED", 0}, {"RED", 1}, {"BLUE", 5}}) {
    auto* v = color->add_value();
    v->set_name(name);
    v->set_number(number);
  }
  auto* all = file.add_message_type();
  all->set_name("All");
  int number = 1;
  const auto add = [&](google::protobuf::DescriptorProto* msg, const std::string& name,
                       google::protobuf::FieldDescriptorProto::Type type, bool repeated,
                       const std::string& type_name = "") {
    auto* f = msg->add_field();
    f->set_name(name);
    f->set_number(number++);
    f->set_type(type);
    f->set_label(repeated ? google::protobuf::FieldDescriptorProto::LABEL_REPEATED
                          : google::protobuf::FieldDescriptorProto::LABEL_OPTIONAL);
    if (!type_name.empty()) f->set_type_name(type_name);
    return f;
  };
  using T = google::protobuf::FieldDescriptorProto;
  const std::pair<const char*, google::protobuf::FieldDescriptorProto::Type> kScalars[] = {
      {"f_int32", T::TYPE_INT32},       {"f_int64", T::TYPE_INT64},
      {"f_uint32", T::TYPE_UINT32},     {"f_uint64", T::TYPE_UINT64},
      {"f_sint32", T::TYPE_SINT32},     {"f_sint64", T::TYPE_SINT64},
      {"f_fixed32", T::TYPE_FIXED32},   {"f_fixed64", T::TYPE_FIXED64},
      {"f_sfixed32", T::TYPE_SFIXED32}, {"f_sfixed64", T::TYPE_SFIXED64},
      {"f_float", T::TYPE_FLOAT},       {"f_double", T::TYPE_DOUBLE},
      {"f_bool", T::TYPE_BOOL},         {"f_string", T::TYPE_STRING},
      {"f_bytes", T::TYPE_BYTES}};
  for (const auto& [name, type] : kScalars) {
    add(all, name, type, false);
    add(all, std::string("r") + name, type, true);
  }
  add(all, "f_enum", T::TYPE_ENUM, false, ".tern.test.Color");
  add(all, "r_enum", T::TYPE_ENUM, true, ".tern.test.Color");
  add(all, "f_child", T::TYPE_MESSAGE, false, ".tern.test.All");
  add(all, "r_child", T::TYPE_MESSAGE, true, ".tern.test.All");
  // proto3 optional: a synthetic oneof per field.
  for (const char* name : {"o_int32", "o_double", "o_string"}) {
    auto* f = add(all, name,
                  std::string(name) == "o_int32"    ? T::TYPE_INT32
                  : std::string(name) == "o_double" ? T::TYPE_DOUBLE
                                                    : T::TYPE_STRING,
                  false);
    f->set_proto3_optional(true);
    f->set_oneof_index(all->oneof_decl_size());
    all->add_oneof_decl()->set_name(std::string("_") + name);
  }
  // Maps: map<KEY, VALUE> is a repeated nested *Entry message.
  const std::tuple<const char*, google::protobuf::FieldDescriptorProto::Type,
                   google::protobuf::FieldDescriptorProto::Type, const char*>
      kMaps[] = {{"m_string_string", T::TYPE_STRING, T::TYPE_STRING, ""},
                 {"m_int32_double", T::TYPE_INT32, T::TYPE_DOUBLE, ""},
                 {"m_int64_enum", T::TYPE_INT64, T::TYPE_ENUM, ".tern.test.Color"},
                 {"m_bool_child", T::TYPE_BOOL, T::TYPE_MESSAGE, ".tern.test.All"}};
  for (const auto& [name, key, value, value_type] : kMaps) {
    auto* entry = all->add_nested_type();
    std::string entry_name;  // protobuf's rule: the field name in CamelCase + "Entry"
    bool upper = true;
    for (const char* c = name; *c != '\0'; ++c) {
      if (*c == '_') {
        upper = true;
      } else {
        entry_name += upper ? static_cast<char>(std::toupper(*c)) : *c;
        upper = false;
      }
    }
    entry_name += "Entry";
    entry->set_name(entry_name);
    entry->mutable_options()->set_map_entry(true);
    const int saved = number;
    number = 1;
    add(entry, "key", key, false);
    add(entry, "value", value, false, value_type);
    number = saved;
    add(all, name, T::TYPE_MESSAGE, true, ".tern.test.All." + entry_name);
  }
  google::protobuf::DescriptorPool pool;
  const google::protobuf::FileDescriptor* built = pool.BuildFile(file);
  ASSERT_NE(built, nullptr);
  google::protobuf::DynamicMessageFactory factory(&pool);
  std::unique_ptr<Message> prototype(factory.GetPrototype(built->message_type(0))->New());
  ExpectSameAsProtobuf(prototype.get(), 500);
}

TEST(ProtoJsonTest, AWellKnownTypeIsLeftToProtobuf) {
  v1::TrainerEvent event;
  event.mutable_time()->set_seconds(1);
  EXPECT_FALSE(ProtoToJson(event).has_value());
  event.clear_time();
  event.mutable_log()->set_text("x");
  EXPECT_EQ(ProtoToJson(event), Printed(event));
}

}  // namespace
}  // namespace tern::server
