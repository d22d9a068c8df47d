#include "tests/support/bench_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "reader/base/file_util.h"

namespace regfs::testing {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double TimeIt(const std::function<void()>& fn) {
  double t0 = NowSeconds();
  fn();
  return NowSeconds() - t0;
}

namespace {

// CPU seconds this machine has spent busy (all CPUs, all processes: user,
// nice, system, irq, softirq, steal from /proc/stat) since boot.
double MachineBusySeconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  if (!in || cpu != "cpu") return 0;
  static const long ticks = sysconf(_SC_CLK_TCK);
  return static_cast<double>(user + nice + system + irq + softirq + steal) /
         static_cast<double>(ticks > 0 ? ticks : 100);
}

}  // namespace

double TimeItWithCpu(const std::function<void()>& fn, double* busy) {
  double c0 = MachineBusySeconds();
  double t = TimeIt(fn);
  *busy = MachineBusySeconds() - c0;
  return t;
}

double WaitForLayersVerified(const std::string& mnt, int layers) {
  const std::string status = mnt + "/.regfs/status.json";
  const std::string key = "\"digestVerified\": true";
  double waited = TimeIt([&] {
    for (int i = 0; i < 6000; ++i) {
      Result<std::string> s = ReadFileToString(status);
      int n = 0;
      for (size_t at = s.ok() ? s->find(key) : std::string::npos; at != std::string::npos;
           at = s->find(key, at + 1)) {
        ++n;
      }
      if (n >= layers) return;
      usleep(5000);
    }
  });
  return waited >= 30 ? -1 : waited;
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 50); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

bool DropPageCache() {
  sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  return static_cast<bool>(f);
}

void Report(const std::string& bench, const std::string& name, double value,
            const std::string& unit, const std::string& note) {
  std::printf("  %-58s %12.3f %s%s%s\n", name.c_str(), value, unit.c_str(),
              note.empty() ? "" : "   ", note.c_str());
  std::fflush(stdout);
  const char* path = std::getenv("REGFS_BENCH_JSON");
  if (!path || !*path) return;
  nlohmann::json j = {{"bench", bench}, {"name", name}, {"value", value}, {"unit", unit}};
  if (!note.empty()) j["note"] = note;
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
}

}  // namespace regfs::testing
