// Human-readable text for ternctl: job tables, job details, one line per job
// event, and the progress bar of `ternctl watch`. Plain functions of their
// arguments (no I/O, no clock except where a `now` is passed); thread-safe.
#ifndef TERN_CLI_RENDER_H_
#define TERN_CLI_RENDER_H_

#include <google/protobuf/timestamp.pb.h>

#include <optional>
#include <string>
#include <vector>

#include "tern/v1/job.pb.h"
#include "tern/v1/job_service.pb.h"

namespace tern::cli {

// "RUNNING" for JOB_STATE_RUNNING.
std::string StateName(v1::JobState state);
bool IsTerminal(v1::JobState state);
// "45s", "3m12s", "1h02m", "2d03h"; "-" for negative or non-finite.
std::string FormatDuration(double seconds);
// "2025-11-27T00:31:59Z" (UTC, whole seconds); "-" when unset.
std::string FormatTime(const google::protobuf::Timestamp& t);
// "87.12%"; "-" when unset.
std::string FormatPercent(std::optional<double> fraction);

// One line per event, e.g.
//   2025-11-27T00:31:59Z #12 progress epoch 1/3 step 50/420 loss 0.8123 ...
std::string FormatEvent(const v1::JobEvent& event);
// `ternctl list`: a header and one row per job.
std::string FormatJobTable(const std::vector<v1::Job>& jobs);
// `ternctl agents`: a header and one row per agent; LEASE relative to `now`.
std::string FormatAgentTable(const std::vector<v1::AgentInfo>& agents,
                             const google::protobuf::Timestamp& now);
// `ternctl whoami`: the caller's name and how it was proven, then what its
// jobs use against its quota, e.g.
//   alice (bearer token; sees its own jobs)
//   quota: cpu 0 of 32 slots, cuda 6 of 8 slots, 3 of 20 unfinished jobs, priority at most 10
//   server: ternd 0.1.0 (v0.1.0-3-gabc1234)   (when the server reports its version)
std::string FormatWhoAmI(const v1::WhoAmIResponse& who);
// `ternctl get`: a few "key: value" lines.
std::string FormatJobDetails(const v1::Job& job);
// Final metrics of a SUCCEEDED job, one line.
std::string FormatResult(const v1::JobResult& result);

// The details of a failed call (its grpc-status-details-bin trailer, a
// serialized google.rpc.Status), one indented line each: every BadRequest
// field violation, every QuotaFailure violation, then the ErrorInfo reason
// and the RetryInfo delay, e.g.
//     spec.optimization.epochs: must be > 0 (required), got 0
//     reason: SPEC_INVALID
//     retry after: 1s
// "" when `serialized` is empty or no google.rpc.Status.
std::string FormatErrorDetails(const std::string& serialized);

// The watch bar:
//   epoch 2/3 [=========>          ] 45% step 190/420 loss 0.512 top-1 81.2% ETA 1m12s
// `top1` is the latest epoch's accuracy, if any; `width` the bar's columns.
std::string FormatProgressBar(const v1::Progress& progress, std::optional<double> top1,
                              int width = 24);

}  // namespace tern::cli

#endif  // TERN_CLI_RENDER_H_
