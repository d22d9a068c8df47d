// Small helpers for the benchmark programs in tests/bench: wall-clock timing,
// percentiles, dropping the page cache, printing one result line in both a
// human table and a JSON line (for the report).
#ifndef REGFS_TESTS_SUPPORT_BENCH_UTIL_H_
#define REGFS_TESTS_SUPPORT_BENCH_UTIL_H_

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace regfs::testing {

double NowSeconds();
// Runs fn and returns the seconds it took.
double TimeIt(const std::function<void()>& fn);
// Times fn; *busy gets the CPU seconds the whole machine was busy over it
// (all CPUs, all processes and the kernel, from /proc/stat): the work the
// step cost the machine.
double TimeItWithCpu(const std::function<void()>& fn, double* busy);
// Median of a few runs.
double Median(std::vector<double> v);
// p in [0, 100]; nearest-rank.
double Percentile(std::vector<double> v, double p);
// echo 3 > /proc/sys/vm/drop_caches (after sync); false if not permitted.
bool DropPageCache();
// Waits (up to 30 s) until the regfs mount at `mnt` reports `layers` layers
// with their digest verified in .regfs/status.json (the background check
// that hashes a blob once the cache holds all of it); returns the seconds
// waited, or a negative value on timeout.
double WaitForLayersVerified(const std::string& mnt, int layers);
// Prints "name: value unit" and appends {"bench":..,"name":..,"value":..,"unit":..}
// to $REGFS_BENCH_JSON when set.
void Report(const std::string& bench, const std::string& name, double value,
            const std::string& unit, const std::string& note = "");
// The regfs binary of the build (REGFS_BINARY_PATH, defined for benchmark
// targets; inline so the definition is the including program's), or
// $REGFS_BINARY when set.
inline std::string RegfsBinary() {
  const char* env = std::getenv("REGFS_BINARY");
  if (env && *env) return env;
#ifdef REGFS_BINARY_PATH
  return REGFS_BINARY_PATH;
#else
  return "regfs";
#endif
}

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_BENCH_UTIL_H_
