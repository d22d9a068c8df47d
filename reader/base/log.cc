#include "reader/base/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace regfs {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};
std::atomic<std::FILE*> g_file{nullptr};
std::mutex g_mu;  // serialises whole lines

bool StderrIsJournal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (!env) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st;
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}
}  // namespace

bool LogToJournal() {
  static const bool journal = StderrIsJournal();
  return journal;
}

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }
void SetLogFile(std::FILE* f) { g_file = f; }

void LogLine(LogLevel level, std::string_view msg) {
  static const char* kNames[] = {"debug", "info", "warning", "error"};
  std::FILE* f = g_file.load();
  if (!f && LogToJournal()) {
    // sd-daemon(3)'s priority prefixes for debug, info, warning, err.
    static const int kPriorities[] = {7, 6, 4, 3};
    std::lock_guard<std::mutex> lock(g_mu);
    std::fprintf(stderr, "<%d>%s: %.*s\n", kPriorities[static_cast<int>(level)],
                 kNames[static_cast<int>(level)], static_cast<int>(msg.size()), msg.data());
    std::fflush(stderr);
    return;
  }
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!f) f = stderr;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(f, "regfs %s %s: %.*s\n", ts, kNames[static_cast<int>(level)],
               static_cast<int>(msg.size()), msg.data());
  std::fflush(f);
}

}  // namespace regfs
