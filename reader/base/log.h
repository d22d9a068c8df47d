// Logging: one line per event to stderr (or a file for the daemon), with a
// level threshold. Thread-safe. Callers never pass secrets: credentials are
// redacted where they are held (reader/http), not here.
#ifndef REGFS_READER_BASE_LOG_H_
#define REGFS_READER_BASE_LOG_H_

#include <cstdio>
#include <string>
#include <string_view>

namespace regfs {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Redirects log output; nullptr restores stderr. The FILE is not owned.
void SetLogFile(std::FILE* f);
void LogLine(LogLevel level, std::string_view msg);
// True when stderr is connected to the systemd journal ($JOURNAL_STREAM names
// stderr's device and inode, as systemd.exec(5) says to check). Lines to
// stderr then carry a syslog priority prefix ("<4>") and no timestamp of our
// own: the journal stamps each line, and two stamps per line help nobody.
// Evaluated once, at the first log line.
bool LogToJournal();

}  // namespace regfs

#define REGFS_LOG(level, msg)                                  \
  do {                                                         \
    if (static_cast<int>(level) >= static_cast<int>(::regfs::GetLogLevel())) \
      ::regfs::LogLine(level, (msg));                          \
  } while (0)
#define LOG_DEBUG(msg) REGFS_LOG(::regfs::LogLevel::kDebug, msg)
#define LOG_INFO(msg) REGFS_LOG(::regfs::LogLevel::kInfo, msg)
#define LOG_WARN(msg) REGFS_LOG(::regfs::LogLevel::kWarning, msg)
#define LOG_ERROR(msg) REGFS_LOG(::regfs::LogLevel::kError, msg)

#endif  // REGFS_READER_BASE_LOG_H_
