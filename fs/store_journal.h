// The layer store's journal: what `regfs store` added to its tree and took
// out of it, in order, so that a successor daemon (fs/session_holder.h) can
// build the very same tree, with the same inode numbers, before it answers
// the kernel. The store resolves images lazily and releases idle layers,
// so its inode numbers depend on the order of lookups and releases; the
// journal is that order. Each change is written before the kernel can hear
// of it (before the lookup that made it is answered), so every inode number
// the kernel holds is in the journal.
//
// The journal is a memfd: in memory, kept by the holder as long as the
// session lives, shared by the first daemon and its successors (they write
// through the same open file), gone with the mount. One record per line
// (JSON); a daemon killed inside a write leaves a torn last line, which the
// successor drops (its change was never visible).
//
// Failure: a write that fails makes the store refuse the change it was for
// (the daemon then answers an errno), never a change a successor would not
// know of.
#ifndef REGFS_FS_STORE_JOURNAL_H_
#define REGFS_FS_STORE_JOURNAL_H_

#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <vector>

#include "reader/base/status.h"
#include "reader/base/unique_fd.h"

namespace regfs {

class StoreJournal {
 public:
  // A new, empty journal.
  static Result<std::unique_ptr<StoreJournal>> Create();
  // The journal a predecessor wrote (the holder's copy of its fd).
  explicit StoreJournal(UniqueFd fd) : fd_(std::move(fd)) {}

  int fd() const { return fd_.get(); }
  // Appends one record. Returns once it is in the journal.
  Status Append(const nlohmann::json& record);
  // Every complete record, in order; a torn last line is cut off, so that
  // the next Append starts a line of its own.
  Result<std::vector<nlohmann::json>> ReadAll();
  // Bytes written (status.json).
  uint64_t Bytes() const;

 private:
  UniqueFd fd_;
  mutable std::mutex mu_;  // one writer at a time: records are whole lines
  uint64_t size_ = 0;      // guarded by mu_
};

}  // namespace regfs

#endif  // REGFS_FS_STORE_JOURNAL_H_
