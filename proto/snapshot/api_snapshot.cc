#include "proto/snapshot/api_snapshot.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "tern/v1/job.pb.h"
#include "tern/v1/job_service.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::api_snapshot {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;
using google::protobuf::ServiceDescriptor;

std::string TypeName(const FieldDescriptor* field) {
  switch (field->type()) {
    case FieldDescriptor::TYPE_MESSAGE:
    case FieldDescriptor::TYPE_GROUP:
      if (field->is_map()) {
        const Descriptor* entry = field->message_type();
        return "map<" + TypeName(entry->map_key()) + ", " + TypeName(entry->map_value()) + ">";
      }
      return field->message_type()->full_name();
    case FieldDescriptor::TYPE_ENUM:
      return field->enum_type()->full_name();
    default:
      return field->type_name();  // "int32", "string", "bytes", ...
  }
}

std::string Label(const FieldDescriptor* field) {
  if (field->is_repeated()) return "repeated";
  if (field->has_optional_keyword()) return "proto3_optional";
  if (field->is_required()) return "required";
  return "optional";
}

void DescribeEnum(const EnumDescriptor* e, std::set<std::string>* out) {
  for (int i = 0; i < e->value_count(); ++i) {
    out->insert("value " + e->full_name() + " " + e->value(i)->name() + " = " +
                std::to_string(e->value(i)->number()));
  }
}

void DescribeMessage(const Descriptor* m, std::set<std::string>* out) {
  if (m->options().map_entry()) return;  // written as map<K, V> on its field
  for (int i = 0; i < m->field_count(); ++i) {
    const FieldDescriptor* f = m->field(i);
    std::string line = "field " + m->full_name() + " " + f->name() + " = " +
                       std::to_string(f->number()) + " " + TypeName(f) + " " + Label(f);
    if (const auto* oneof = f->real_containing_oneof()) line += " oneof " + oneof->name();
    out->insert(line);
  }
  for (int i = 0; i < m->nested_type_count(); ++i) DescribeMessage(m->nested_type(i), out);
  for (int i = 0; i < m->enum_type_count(); ++i) DescribeEnum(m->enum_type(i), out);
}

void DescribeService(const ServiceDescriptor* s, std::set<std::string>* out) {
  for (int i = 0; i < s->method_count(); ++i) {
    const auto* method = s->method(i);
    out->insert("method " + method->full_name() + " " +
                (method->client_streaming() ? "stream " : "") + method->input_type()->full_name() +
                " -> " + (method->server_streaming() ? "stream " : "") +
                method->output_type()->full_name());
  }
}

std::vector<std::string> Words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// The names under which a line's item is known: for fields and values its
// scope plus its name, and its scope plus its number; for methods its name.
std::vector<std::string> Identities(const std::string& line) {
  const std::vector<std::string> w = Words(line);
  if (w.size() >= 5 && (w[0] == "field" || w[0] == "value") && w[3] == "=") {
    return {w[0] + " " + w[1] + " name " + w[2], w[0] + " " + w[1] + " number " + w[4]};
  }
  if (w.size() >= 2) return {w[0] + " " + w[1]};
  return {line};
}

}  // namespace

std::vector<std::string> Describe(const std::vector<const FileDescriptor*>& files) {
  std::set<std::string> lines;
  for (const FileDescriptor* file : files) {
    for (int i = 0; i < file->message_type_count(); ++i) {
      DescribeMessage(file->message_type(i), &lines);
    }
    for (int i = 0; i < file->enum_type_count(); ++i) DescribeEnum(file->enum_type(i), &lines);
    for (int i = 0; i < file->service_count(); ++i) DescribeService(file->service(i), &lines);
  }
  return {lines.begin(), lines.end()};
}

std::vector<const FileDescriptor*> TernV1Files() {
  return {v1::Job::descriptor()->file(), v1::GetJobRequest::descriptor()->file(),
          v1::RegisterRequest::descriptor()->file()};
}

std::vector<std::string> Incompatibilities(const std::vector<std::string>& snapshot,
                                           const std::vector<std::string>& current) {
  const std::set<std::string> now(current.begin(), current.end());
  std::multimap<std::string, std::string> now_by_identity;
  for (const std::string& line : current) {
    for (const std::string& id : Identities(line)) now_by_identity.emplace(id, line);
  }
  std::vector<std::string> problems;
  for (const std::string& line : snapshot) {
    if (now.count(line) > 0) continue;
    std::set<std::string> successors;
    for (const std::string& id : Identities(line)) {
      const auto [begin, end] = now_by_identity.equal_range(id);
      for (auto it = begin; it != end; ++it) successors.insert(it->second);
    }
    std::string problem = "\"" + line + "\" ";
    if (successors.empty()) {
      problem += "was removed";
    } else {
      problem += "changed; now:";
      for (const std::string& s : successors) problem += " \"" + s + "\"";
    }
    problems.push_back(problem);
  }
  return problems;
}

std::vector<std::string> ParseSnapshot(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    lines.push_back(line);
  }
  return lines;
}

}  // namespace tern::api_snapshot
