// Deterministic randomness for the data loaders: the same streams on every
// platform and LibTorch version, so a sample's augmentation depends only on
// (seed, epoch, sample index). Header-only, no LibTorch.
#ifndef TERN_WORKER_TRAINER_RANDOM_H_
#define TERN_WORKER_TRAINER_RANDOM_H_

#include <cstdint>

namespace tern::trainer {

// SplitMix64's finalizer: a bijective, well-mixing 64-bit hash.
inline uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// SplitMix64 generator with an unbiased bounded draw.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), bound > 0.
  uint64_t Below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    while (true) {
      const uint64_t r = Next();
      if (r >= threshold) return r % bound;
    }
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_RANDOM_H_
