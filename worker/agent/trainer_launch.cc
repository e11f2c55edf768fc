#include "worker/agent/trainer_launch.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "path_policy/spec_paths.h"
#include "trainer_protocol/lease_file.h"

extern char** environ;

namespace tern::agent {
namespace {

// A job id as a directory name: [A-Za-z0-9_.-] kept, everything else '_'.
std::string PathSafe(const std::string& s) {
  std::string out;
  for (char c : s)
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '_';
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

// The directory of the assignment's artifact; "" when it names none.
std::string ArtifactDir(const v1::Assignment& a) {
  const size_t slash = a.artifact_path().rfind('/');
  return slash == std::string::npos || slash == 0 ? "" : a.artifact_path().substr(0, slash);
}

std::string Joined(const std::vector<std::string>& paths) {
  std::string joined;
  for (const std::string& p : paths) joined += (joined.empty() ? "" : ", ") + p;
  return joined;
}

}  // namespace

std::string TrainerLauncher::JobDir(const v1::RankRef& ref) const {
  return options_.workdir + "/jobs/" + PathSafe(ref.job_id());
}

std::string TrainerLauncher::LeaseFile(const v1::RankRef& ref) const {
  return JobDir(ref) + "/rank-" + std::to_string(ref.rank()) + "/agent-lease-attempt-" +
         std::to_string(ref.attempt());
}

StatusOr<LaunchPlan> TrainerLauncher::Plan(const v1::Assignment& a, int cuda_slot,
                                           const std::string& log_prefix,
                                           std::string* failure_code) {
  const std::string rank_dir = JobDir(a.ref()) + "/rank-" + std::to_string(a.ref().rank());
  TERN_ASSIGN_OR_RETURN(const std::string spec_path, PrepareFiles(a, rank_dir, failure_code));
  LaunchPlan plan;
  StatusOr<std::optional<FsConfinement>> confined = Confine(a, rank_dir);
  if (!confined.ok()) {
    return confined.status().WithContext("confining the trainer's file access");
  }
  plan.confinement = std::move(confined).value();
  if (plan.confinement) {
    TERN_LOG(INFO) << log_prefix << "trainer writes confined (Landlock ABI "
                   << FsConfinement::AbiVersion() << ") to " << Joined(plan.confinement->allowed())
                   << (plan.confinement->confines_reads()
                           ? "; its reads to those and " + Joined(plan.confinement->readable())
                           : std::string());
  }
  ChildProcess::Options& o = plan.process;
  o.argv = {options_.trainer_path,
            "--spec",
            spec_path,
            "--rank",
            std::to_string(a.ref().rank()),
            "--world-size",
            std::to_string(a.world_size()),
            "--master",
            a.rendezvous_host() + ":" + std::to_string(a.rendezvous_port()),
            "--workdir",
            rank_dir};
  if (!a.artifact_path().empty()) {
    o.argv.push_back("--artifact");
    o.argv.push_back(a.artifact_path());
  }
  o.env = Env(a, cuda_slot, plan.confinement ? rank_dir + "/tmp" : "");
  o.working_dir = rank_dir;
  if (plan.confinement) o.landlock_ruleset_fd = plan.confinement->fd();
  return plan;
}

StatusOr<std::string> TrainerLauncher::PrepareFiles(const v1::Assignment& a,
                                                    const std::string& rank_dir,
                                                    std::string* failure_code) const {
  TERN_RETURN_IF_ERROR(MakeDirectories(rank_dir));
  if (const std::string dir = ArtifactDir(a); !dir.empty()) {
    // ternd gives each job an artifact directory of its own; the trainer
    // writes the file (and, for detection, its detections) into it.
    TERN_RETURN_IF_ERROR(MakeDirectories(dir));
  }
  v1::JobSpec spec = a.spec();
  // The trainer reads the checkpoint directory from the spec; every rank of
  // the job must use the same one.
  if (!a.checkpoint_dir().empty()) {
    spec.mutable_checkpoint()->set_directory(a.checkpoint_dir());
  } else if (spec.checkpoint().directory().empty()) {
    spec.mutable_checkpoint()->set_directory(JobDir(a.ref()) + "/checkpoints");
  }
  if (a.has_path_grant()) {
    // ternd checked the names; here links are followed, on this node's files.
    StatusOr<std::vector<paths::NamedPath>> named = paths::PathsNamedBy(spec);
    const Status allowed =
        named.ok() ? paths::CheckResolvedPaths(*named, a.path_grant()) : named.status();
    if (!allowed.ok()) {
      *failure_code = StatusCodeName(allowed.code());  // the job's fault: not retried
      return allowed;
    }
  }
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string json;
  const auto printed = google::protobuf::util::MessageToJsonString(spec, &json, print);
  if (!printed.ok()) return InternalError("printing the spec as JSON: " + printed.ToString());
  const std::string spec_path =
      rank_dir + "/spec-attempt-" + std::to_string(a.ref().attempt()) + ".json";
  TERN_RETURN_IF_ERROR(WriteFileAtomically(spec_path, json + "\n"));
  return spec_path;
}

StatusOr<std::optional<FsConfinement>> TrainerLauncher::Confine(const v1::Assignment& a,
                                                                const std::string& rank_dir) {
  if (!a.has_path_grant() || options_.confine_writes == AgentOptions::ConfineWrites::kOff) {
    return std::optional<FsConfinement>();
  }
  // Directories the trainer creates must exist for a rule to name them.
  std::vector<std::string> dirs(a.path_grant().write_roots().begin(),
                                a.path_grant().write_roots().end());
  if (!a.checkpoint_dir().empty()) {
    TERN_RETURN_IF_ERROR(MakeDirectories(a.checkpoint_dir()));
    dirs.push_back(a.checkpoint_dir());
  }
  if (const std::string dir = ArtifactDir(a); !dir.empty()) {
    dirs.push_back(dir);  // PrepareFiles created it
  }
  dirs.push_back("/dev");    // /dev/null, /dev/shm (NCCL), GPU device nodes
  dirs.push_back(rank_dir);  // holds the trainer's TMPDIR too (a shared /tmp is not writable)
  TERN_RETURN_IF_ERROR(MakeDirectories(rank_dir + "/tmp"));
  dirs.insert(dirs.end(), options_.trainer_writable.begin(), options_.trainer_writable.end());
  FsRules rules;
  rules.writable = std::move(dirs);
  if (options_.confine_reads == AgentOptions::ConfineReads::kOn) {
    // The job's data (ternd checked its names against these roots, and this
    // agent again with links resolved) and what every trainer needs.
    std::vector<std::string> readable(a.path_grant().read_roots().begin(),
                                      a.path_grant().read_roots().end());
    const std::vector<std::string> base = TrainerReadable(options_);
    readable.insert(readable.end(), base.begin(), base.end());
    rules.readable = std::move(readable);
  }
  StatusOr<FsConfinement> confinement = FsConfinement::Create(rules);
  if (confinement.ok()) return std::optional<FsConfinement>(std::move(confinement).value());
  if (confinement.status().code() == StatusCode::kUnavailable &&
      options_.confine_writes == AgentOptions::ConfineWrites::kAuto &&
      options_.confine_reads == AgentOptions::ConfineReads::kOff) {
    if (!warned_no_landlock_.exchange(true)) {
      TERN_LOG(WARNING) << "trainers' writes are not confined: " << confinement.status()
                        << " (their paths are still checked by name)";
    }
    return std::optional<FsConfinement>();
  }
  return confinement.status();
}

std::vector<std::string> TrainerLauncher::Env(const v1::Assignment& a, int cuda_slot,
                                              const std::string& tmpdir) const {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  env["TERN_JOB_ID"] = a.ref().job_id();
  env["TERN_ATTEMPT"] = std::to_string(a.ref().attempt());
  env["TERN_RANK"] = std::to_string(a.ref().rank());
  env["TERN_WORLD_SIZE"] = std::to_string(a.world_size());
  env["TERN_MASTER_ADDR"] = a.rendezvous_host();
  env["TERN_MASTER_PORT"] = std::to_string(a.rendezvous_port());
  // Every rank listens for its peers (Gloo) on the address this agent
  // advertises, the one ternd gives the other ranks when rank 0 runs here;
  // not the hostname's address, which resolves to loopback on many hosts.
  env["TERN_BIND_ADDR"] = options_.host;
  env["TERN_AGENT_ID"] = options_.agent_id;
  env[trainer::kLeaseFileEnv] = LeaseFile(a.ref());
  if (!tmpdir.empty()) env["TMPDIR"] = tmpdir;
  // A secret: in the environment (readable by this user only), not argv.
  if (!a.rendezvous_key().empty()) env["TERN_RENDEZVOUS_KEY"] = a.rendezvous_key();
  // Under path roots the trainer reads only beneath what the spec names
  // (detection::CocoReadOptions::file_names_inside_image_dir).
  if (a.has_path_grant()) env["TERN_CONFINE_DATA"] = "1";
  // A CPU rank sees no GPU; a CUDA rank sees its own as cuda:0.
  env["CUDA_VISIBLE_DEVICES"] = cuda_slot >= 0 ? std::to_string(cuda_slot) : "";
  if (cuda_slot < 0 && !a.spec().resources().has_threads_per_rank() &&
      !env.count("OMP_NUM_THREADS")) {
    // Spread the cores over the CPU slots instead of every rank using all.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    env["OMP_NUM_THREADS"] = std::to_string(std::max(1, cores / std::max(1, options_.cpu_slots)));
  }
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

}  // namespace tern::agent
