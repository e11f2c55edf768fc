// The tern.v1 API as a text snapshot, and the check that a newer API keeps
// every field, enum value and method of an older one (wire compatibility).
//
// A snapshot is one line per item, sorted:
//   field tern.v1.Job id = 1 string optional
//   field tern.v1.Job spec = 2 tern.v1.JobSpec optional
//   field tern.v1.JobSpec labels = 3 map<string, string> repeated
//   field tern.v1.JobEvent progress = 11 tern.v1.Progress optional oneof kind
//   value tern.v1.JobState JOB_STATE_QUEUED = 1
//   method tern.v1.JobService.GetJob tern.v1.GetJobRequest -> tern.v1.Job
//   method tern.v1.JobService.WatchJob tern.v1.WatchJobRequest -> stream tern.v1.JobEvent
// Labels are "optional" (proto3 implicit presence), "proto3_optional" (the
// `optional` keyword) or "repeated"; map entry messages are written as the
// map<K, V> type of their field. Options (field_behavior, comments) are not
// part of a snapshot: changing them does not change the wire.
//
// proto/tern/v1/api.snapshot is the committed snapshot;
// scripts/update-api-snapshot.sh rewrites it (tern-api-snapshot).
#ifndef TERN_PROTO_SNAPSHOT_API_SNAPSHOT_H_
#define TERN_PROTO_SNAPSHOT_API_SNAPSHOT_H_

#include <google/protobuf/descriptor.h>

#include <string>
#include <vector>

namespace tern::api_snapshot {

// The snapshot lines of every message, enum and service declared in `files`
// (nested types included), sorted, without duplicates.
std::vector<std::string> Describe(
    const std::vector<const google::protobuf::FileDescriptor*>& files);

// The files of the tern.v1 package compiled into this program.
std::vector<const google::protobuf::FileDescriptor*> TernV1Files();

// Every line of `snapshot` must also be in `current` (additions are allowed).
// One problem per line that is not, saying what it is now ("removed", or the
// current line with the same name or number: renumbered, retyped, renamed).
// Empty: compatible.
std::vector<std::string> Incompatibilities(const std::vector<std::string>& snapshot,
                                           const std::vector<std::string>& current);

// Splits text into its non-empty lines that do not start with '#'.
std::vector<std::string> ParseSnapshot(const std::string& text);

}  // namespace tern::api_snapshot

#endif  // TERN_PROTO_SNAPSHOT_API_SNAPSHOT_H_
