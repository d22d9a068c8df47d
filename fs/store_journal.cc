#include "fs/store_journal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace regfs {

Result<std::unique_ptr<StoreJournal>> StoreJournal::Create() {
  int fd = memfd_create("regfs-store-journal", MFD_CLOEXEC);
  if (fd < 0) return Status::IoError(std::string("memfd_create: ") + std::strerror(errno));
  return std::make_unique<StoreJournal>(UniqueFd(fd));
}

Status StoreJournal::Append(const nlohmann::json& record) {
  std::string line = record.dump() + "\n";
  std::lock_guard lock(mu_);
  // pwrite at our own end: the file offset is shared with the holder's and
  // earlier daemons' copies of the fd, the size is not ours to guess.
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n =
        pwrite(fd_.get(), line.data() + done, line.size() - done, static_cast<off_t>(size_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Cut the partial line off: the next record starts clean.
      (void)!ftruncate(fd_.get(), static_cast<off_t>(size_));
      return Status::IoError(std::string("store journal: ") + std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  size_ += line.size();
  return Status::Ok();
}

Result<std::vector<nlohmann::json>> StoreJournal::ReadAll() {
  std::lock_guard lock(mu_);
  std::string text;
  char buf[64 << 10];
  for (off_t off = 0;;) {
    ssize_t n = pread(fd_.get(), buf, sizeof buf, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError(std::string("store journal: ") + std::strerror(errno));
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  std::vector<nlohmann::json> records;
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    auto j = nlohmann::json::parse(text.substr(start, nl - start), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return Status::Corrupt("store journal: a bad record at byte " + std::to_string(start));
    }
    records.push_back(std::move(j));
  }
  if (start != text.size() && ftruncate(fd_.get(), static_cast<off_t>(start)) != 0) {
    return Status::IoError(std::string("store journal: ") + std::strerror(errno));
  }
  size_ = start;
  return records;
}

uint64_t StoreJournal::Bytes() const {
  std::lock_guard lock(mu_);
  return size_;
}

}  // namespace regfs
