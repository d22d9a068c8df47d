#include "reader/base/log.h"

#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>

namespace regfs {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};
std::atomic<std::FILE*> g_file{nullptr};
std::mutex g_mu;  // serialises whole lines
}  // namespace

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
void SetLogFile(std::FILE* f) { g_file = f; }

void LogLine(LogLevel level, std::string_view msg) {
  static const char* kNames[] = {"debug", "info", "warning", "error"};
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::FILE* f = g_file.load();
  if (!f) f = stderr;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(f, "regfs %s %s: %.*s\n", ts, kNames[static_cast<int>(level)],
               static_cast<int>(msg.size()), msg.data());
  std::fflush(f);
}

}  // namespace regfs
