// The deterministic mutation driver of the fuzz targets (fuzz_target.h).
//
//   <target> [--runs N] [--seed S] [--max-len BYTES] [--timeout SECONDS]
//            [FILE|DIR ...]
//   <target> --write-seeds DIR
//
// Runs every built-in seed and every given file once, then N inputs made by
// stacking 1 to 8 random mutations (bit flips, interesting bytes and
// integers, inserted, erased, duplicated and spliced ranges, truncation,
// numbers swapped for edge-case numbers) on a random earlier input. The same
// seed gives the same inputs. No coverage feedback: this is the quick check
// that ctest runs; scripts/fuzz.sh runs libFuzzer for the long searches.
// When an input ends the process (abort, sanitizer report, fatal signal) or
// runs longer than --timeout seconds (default 20: a hang is a finding too),
// its bytes are written to crash-<target>-<run> in the current directory
// (or $TERN_FUZZ_CRASH_DIR) first; pass that file to reproduce.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"

// AddressSanitizer calls this before it ends the process (weak: absent
// without ASan).
extern "C" void __sanitizer_set_death_callback(void (*callback)(void))
    __attribute__((weak));

namespace {

namespace fs = std::filesystem;

// The input being run and where to save it, for the crash handlers. Written
// only between runs; read by the handlers with async-signal-safe calls.
const std::string* g_current = nullptr;
char g_crash_path[4096] = {0};

void SaveCurrentInput() {
  static volatile sig_atomic_t saved = 0;
  if (saved || g_current == nullptr || g_crash_path[0] == '\0') return;
  saved = 1;
  const int fd = ::open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  const char* p = g_current->data();
  size_t left = g_current->size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
  ::close(fd);
  static const char kMsg[] = "\nfuzz: the failing input is saved in ";
  (void)!::write(2, kMsg, sizeof(kMsg) - 1);
  (void)!::write(2, g_crash_path, std::strlen(g_crash_path));
  (void)!::write(2, "\n", 1);
}

void OnFatalSignal(int sig) {
  SaveCurrentInput();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void OnTimeout(int) {
  static const char kMsg[] = "\nfuzz: an input ran longer than --timeout\n";
  (void)!::write(2, kMsg, sizeof(kMsg) - 1);
  SaveCurrentInput();
  ::signal(SIGABRT, SIG_DFL);
  ::abort();
}

void InstallCrashHandlers() {
  ::signal(SIGALRM, OnTimeout);
  if (__sanitizer_set_death_callback != nullptr) {
    __sanitizer_set_death_callback(SaveCurrentInput);
  }
  // Sanitizers install their own SEGV/BUS/FPE handlers when present; these
  // cover aborts (TERN_CHECK, an uncaught exception) and plain builds.
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) {
    struct sigaction old {};
    ::sigaction(sig, nullptr, &old);
    if (old.sa_handler == SIG_DFL) ::signal(sig, OnFatalSignal);
  }
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  size_t Below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  // One to eight stacked mutations of `in`, spliced with `other` sometimes.
  std::string Mutate(const std::string& in, const std::string& other,
                     size_t max_len) {
    std::string s = in;
    const size_t count = 1 + Below(8);
    for (size_t i = 0; i < count; ++i) MutateOnce(&s, other);
    if (s.size() > max_len) s.resize(max_len);
    return s;
  }

 private:
  void MutateOnce(std::string* s, const std::string& other) {
    static const char kBytes[] = {0,   '\xff', '\x7f', '\x80', '0', '9', '"',  '{',
                                  '}', '[',    ']',    ',',    ':', '-', '.',  'e',
                                  '\\', '\n',  ' ',    'u',    'n', 't', '\x01'};
    static const char* const kNumbers[] = {
        "-1", "0", "1e308", "-1e308", "1e-320", "nan", "NaN", "inf", "-inf",
        "2147483648", "-2147483649", "4294967296", "9223372036854775807",
        "18446744073709551616", "99999999999999999999999", "0.5", "-0", "1E+9",
        "null", "true", "\"\"", "[]", "{}"};
    const size_t pos = Below(s->size() + 1);
    switch (Below(s->empty() ? 3 : 11)) {
      case 0: {  // insert 1-8 random bytes
        std::string bytes(1 + Below(8), '\0');
        for (char& c : bytes) c = static_cast<char>(rng_());
        s->insert(pos, bytes);
        break;
      }
      case 1:  // insert an interesting byte
        s->insert(pos, 1, kBytes[Below(sizeof(kBytes))]);
        break;
      case 2: {  // splice: our prefix, the other input's suffix
        const size_t cut = Below(other.size() + 1);
        *s = s->substr(0, pos) + other.substr(cut);
        break;
      }
      case 3:  // flip one bit
        (*s)[Below(s->size())] ^= static_cast<char>(1u << Below(8));
        break;
      case 4:  // overwrite with an interesting byte
        (*s)[Below(s->size())] = kBytes[Below(sizeof(kBytes))];
        break;
      case 5:  // overwrite with a random byte
        (*s)[Below(s->size())] = static_cast<char>(rng_());
        break;
      case 6: {  // erase a range
        const size_t at = Below(s->size());
        s->erase(at, 1 + Below(std::min<size_t>(s->size() - at, 64)));
        break;
      }
      case 7: {  // duplicate a range
        const size_t at = Below(s->size());
        const size_t len = 1 + Below(std::min<size_t>(s->size() - at, 64));
        s->insert(Below(s->size() + 1), s->substr(at, len));
        break;
      }
      case 8:  // truncate
        s->resize(Below(s->size()));
        break;
      case 9: {  // a little-endian interesting integer over 1, 2, 4 or 8 bytes
        static const uint64_t kInts[] = {0,          1,          0x7f,       0x80,
                                         0xff,       0x7fff,     0xffff,     0x7fffffff,
                                         0x80000000, 0xffffffff, ~uint64_t{0}, uint64_t{1} << 40};
        const uint64_t v = kInts[Below(std::size(kInts))];
        const size_t width = size_t{1} << Below(4);
        const size_t at = Below(s->size());
        for (size_t b = 0; b < width && at + b < s->size(); ++b) {
          (*s)[at + b] = static_cast<char>((v >> (8 * b)) & 0xff);
        }
        break;
      }
      default: {  // swap a run of digits for an edge-case number
        size_t at = Below(s->size());
        while (at < s->size() && !std::isdigit(static_cast<unsigned char>((*s)[at]))) ++at;
        if (at == s->size()) {
          s->insert(pos, kNumbers[Below(std::size(kNumbers))]);
          break;
        }
        size_t end = at;
        while (end < s->size() &&
               (std::isdigit(static_cast<unsigned char>((*s)[end])) || (*s)[end] == '.')) {
          ++end;
        }
        s->replace(at, end - at, kNumbers[Below(std::size(kNumbers))]);
        break;
      }
    }
  }

  std::mt19937_64 rng_;
};

bool ReadFile(const fs::path& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

int Usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--runs N] [--seed S] [--max-len BYTES] [--timeout SECONDS] [FILE|DIR ...]\n"
            << "       " << argv0 << " --write-seeds DIR\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = fs::path(argv[0]).filename().string();
  uint64_t runs = 2000, seed = 1, max_len = uint64_t{1} << 20, timeout = 20;
  std::string write_seeds;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    char* end = nullptr;
    if (arg == "--runs" || arg == "--seed" || arg == "--max-len" || arg == "--timeout") {
      if ((v = value()) == nullptr) return Usage(argv[0]);
      const unsigned long long n = std::strtoull(v, &end, 10);
      if (*v == '\0' || *end != '\0') return Usage(argv[0]);
      uint64_t& target = arg == "--runs"      ? runs
                         : arg == "--seed"    ? seed
                         : arg == "--timeout" ? timeout
                                              : max_len;
      target = n;
    } else if (arg == "--write-seeds") {
      if ((v = value()) == nullptr) return Usage(argv[0]);
      write_seeds = v;
    } else if (!arg.empty() && arg[0] == '-') {
      return Usage(argv[0]);
    } else {
      paths.push_back(arg);
    }
  }

  std::vector<std::string> pool = TernFuzzSeeds();
  if (!write_seeds.empty()) {
    fs::create_directories(write_seeds);
    for (size_t i = 0; i < pool.size(); ++i) {
      std::ofstream(fs::path(write_seeds) / ("seed-" + std::to_string(i)), std::ios::binary)
          << pool[i];
    }
    std::cout << target << ": wrote " << pool.size() << " seeds to " << write_seeds << "\n";
    return 0;
  }
  for (const std::string& p : paths) {
    std::vector<fs::path> files;
    if (fs::is_directory(p)) {
      for (const auto& e : fs::directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(p);
    }
    for (const fs::path& f : files) {
      std::string bytes;
      if (!ReadFile(f, &bytes)) {
        std::cerr << target << ": cannot read " << f << "\n";
        return 2;
      }
      pool.push_back(std::move(bytes));
    }
  }
  if (pool.empty()) pool.emplace_back();

  const char* dir = std::getenv("TERN_FUZZ_CRASH_DIR");
  InstallCrashHandlers();
  Mutator mutator(seed);
  const auto start = std::chrono::steady_clock::now();
  const size_t given = pool.size();
  std::string input;
  double slowest = 0;
  uint64_t slowest_run = 0;
  for (uint64_t run = 0; run < given + runs; ++run) {
    if (run < given) {
      input = pool[run];
    } else {
      const std::string& base = pool[mutator.Below(pool.size())];
      input = mutator.Mutate(base, pool[mutator.Below(pool.size())],
                             static_cast<size_t>(max_len));
    }
    std::snprintf(g_crash_path, sizeof(g_crash_path), "%s/crash-%s-%llu",
                  dir != nullptr ? dir : ".", target.c_str(),
                  static_cast<unsigned long long>(run));
    g_current = &input;
    ::alarm(static_cast<unsigned>(timeout));
    const auto input_start = std::chrono::steady_clock::now();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - input_start).count();
    ::alarm(0);
    if (took > slowest) {
      slowest = took;
      slowest_run = run;
    }
    g_current = nullptr;
    // Keep some mutants as bases, so that mutations can stack further.
    if (run >= given && mutator.Below(16) == 0 && pool.size() < 4096) pool.push_back(input);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << target << ": " << given << " given inputs and " << runs
            << " mutations (seed " << seed << ") ran cleanly in " << seconds
            << " s; the slowest input (run " << slowest_run << ") took " << slowest << " s\n";
  return 0;
}
