#include "fs/fuse_daemon.h"

#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <algorithm>
#include <thread>
#include <condition_variable>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "fs/errno_map.h"
#include "reader/base/log.h"

namespace regfs {

struct SessionDeleter {
  void operator()(fuse_session* s) const { fuse_session_destroy(s); }
};
struct LoopConfigDeleter {
  void operator()(fuse_loop_config* c) const { fuse_loop_cfg_destroy(c); }
};

struct FuseDaemon::Impl {
  Tree* tree;
  FsContent* content;
  FuseOptions opts;
  std::unique_ptr<fuse_session, SessionDeleter> se;
  std::mutex mount_mu;  // guards `mounted` against Exit() racing Unmount()
  bool mounted = false;

  std::mutex handles_mu;  // guards handles
  std::unordered_map<uint64_t, std::shared_ptr<const std::string>> handles;
  // Handles of dynamic files start at pid << 32: a successor daemon (another
  // pid) never hands out a number the kernel still holds from its
  // predecessor, whose handles it regenerates on first use.
  std::atomic<uint64_t> next_fh{(static_cast<uint64_t>(getpid()) << 32) | 1};
  bool no_opendir = false;  // set once in init, before any other request
  std::string mount_dev;        // "major:minor" of the mount, set at mount
  std::string read_ahead_path;  // the bdi's read_ahead_kb, set at mount
  std::once_flag read_ahead_once;

  // Restarts. The first daemon reads the kernel's INIT through IoRead and
  // keeps its bytes for a holder; a successor replays them to libfuse with
  // the reply dropped (the kernel did INIT once, with the first daemon).
  bool took_over = false;  // this session was taken over: no fuse_session_mount
  bool adopted = false;    // ...before INIT was answered: INIT comes from the kernel
  std::atomic<bool> init_seen{false};
  std::string init_bytes;       // written before init_seen, read after it
  bool replaying_init = false;  // set only before the loop starts
};

namespace {

using Impl = FuseDaemon::Impl;

Impl* Self(fuse_req_t req) { return static_cast<Impl*>(fuse_req_userdata(req)); }

void WriteReadAhead(const std::string& path, unsigned kib);

// The exception barrier: no exception reaches libfuse's C code, and a
// request whose handler threw still gets exactly one reply. The first
// request also raises the mount's read-ahead: the kernel offers FUSE 128 KiB
// by default and resets the bdi's value when it processes INIT, so it can
// only be raised once INIT is done.
template <typename F>
void Guard(fuse_req_t req, const char* op, F&& f) {
  Impl* impl = Self(req);
  std::call_once(impl->read_ahead_once,
                 [impl] { WriteReadAhead(impl->read_ahead_path, impl->opts.read_ahead_kb); });
  try {
    f();
  } catch (const std::exception& e) {
    LOG_ERROR(std::string("EIO (F01) in ") + op + ": " + e.what());
    fuse_reply_err(req, EIO);
  } catch (...) {
    LOG_ERROR(std::string("EIO (F02) in ") + op + ": unknown exception");
    fuse_reply_err(req, EIO);
  }
}

void FillStat(Ino ino, const NodeAttr& a, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_mode = a.mode;
  st->st_nlink = a.nlink;
  st->st_uid = a.uid;
  st->st_gid = a.gid;
  st->st_size = static_cast<off_t>(a.size);
  st->st_rdev = a.rdev;
  st->st_blksize = 4096;
  st->st_blocks = static_cast<blkcnt_t>((a.size + 511) / 512);
  st->st_mtim.tv_sec = a.mtime_sec;
  st->st_mtim.tv_nsec = a.mtime_nsec;
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
}

int ReplyStatus(fuse_req_t req, const Status& s, const char* site) {
  int err = StatusToErrno(s);
  if (err == EIO) LOG_WARN(std::string("EIO (") + site + "): " + s.ToString());
  return fuse_reply_err(req, err);
}

// Whether the caller may make the content work on its behalf
// (FuseOptions::trusted_uids). Lookups and listings that overlayfs makes for
// a container carry its mounter's uid, not the container process's, so a
// container of any user started by a trusted one is trusted here.
bool Trusted(const Impl* self, fuse_req_t req) {
  const std::vector<uid_t>& trusted = self->opts.trusted_uids;
  return trusted.empty() ||
         std::find(trusted.begin(), trusted.end(), fuse_req_ctx(req)->uid) != trusted.end();
}

// An inode the tree does not hold yet: a successor daemon (after a restart)
// is asked about inodes its predecessor handed out, in layers it has not
// filled yet. The inode's segment says which (Tree::SetPending); filling it
// numbers its entries as before. Anyone may cause this: the caller holds
// the inode already (an open file, a cwd), trusted or not.
void EnsureKnown(Impl* self, Ino ino) {
  uint32_t seg = Tree::SegmentOf(ino);
  if (seg == 0 || self->tree->Contains(ino)) return;
  Status s = self->content->Populate(seg);
  if (!s.ok()) LOG_WARN("inode " + std::to_string(ino) + " of a predecessor: " + s.ToString());
}

// Tree::Get, with EnsureKnown only on a miss (one lock on the usual path).
Result<Node> GetNode(Impl* self, Ino ino) {
  Result<Node> node = self->tree->Get(ino);
  if (node.ok() || Tree::SegmentOf(ino) == 0) return node;
  EnsureKnown(self, ino);
  return self->tree->Get(ino);
}

// A pending directory (a layer not yet indexed) is filled before anyone
// looks into it; filling it fetches the layer, so only a trusted caller may
// start that.
Status EnsurePopulated(Impl* self, fuse_req_t req, Ino dir) {
  uint32_t id = self->tree->PendingId(dir);
  if (id == 0 && Tree::SegmentOf(dir) != 0 && !self->tree->Contains(dir)) {
    EnsureKnown(self, dir);
    id = self->tree->PendingId(dir);
  }
  if (id == 0) return Status::Ok();
  if (!Trusted(self, req)) return Status::Unauthorized("caller may not populate");
  return self->content->Populate(id);
}

// The session's I/O: plain read/writev, but the first daemon keeps a copy
// of the INIT request, and a successor's replayed INIT is not answered.
ssize_t IoRead(int fd, void* buf, size_t len, void* userdata) {
  auto* self = static_cast<Impl*>(userdata);
  ssize_t n = read(fd, buf, len);
  if (n >= static_cast<ssize_t>(sizeof(fuse_in_header)) &&
      !self->init_seen.load(std::memory_order_acquire)) {
    fuse_in_header h;
    std::memcpy(&h, buf, sizeof h);
    if (h.opcode == FUSE_INIT) {
      self->init_bytes.assign(static_cast<const char*>(buf), static_cast<size_t>(n));
      self->init_seen.store(true, std::memory_order_release);
    }
  }
  return n;
}

ssize_t IoWritev(int fd, iovec* iov, int count, void* userdata) {
  auto* self = static_cast<Impl*>(userdata);
  if (self->replaying_init) {
    ssize_t total = 0;
    for (int i = 0; i < count; ++i) total += static_cast<ssize_t>(iov[i].iov_len);
    return total;
  }
  return writev(fd, iov, count);
}

const fuse_custom_io kIo = {IoWritev, IoRead, nullptr, nullptr};

void OpInit(void* userdata, fuse_conn_info* conn) {
  auto* self = static_cast<Impl*>(userdata);
  if ((!self->took_over || self->adopted) && self->opts.on_init &&
      self->init_seen.load(std::memory_order_acquire)) {
    self->opts.on_init(fuse_session_fd(self->se.get()), self->init_bytes);
  }
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // opendir/releasedir carry nothing for us (a handle is an inode number), and
  // they are 2 of every 5 requests a `find` sends: the kernel may skip them.
  if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
    conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
    self->no_opendir = true;
  }
  // Everything is immutable: the kernel may keep pages and attributes.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  // readdirplus for every piece of a listing, not only the first (the
  // kernel's "auto" mode): with auto, `du -s rootfs` of rootfs_bench's tree
  // (5,970 entries) looked up 1,589 entries one round trip each, and took
  // 2.1 times as long as on the unpacked tree; now it makes no lookups and
  // takes 0.9-1.0 times as long.
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  conn->time_gran = 1;
  // libfuse derives the kernel's max_pages (the largest request) from
  // max_write: raise it so a sequential read arrives in 1 MiB requests, not
  // 128 or 256 KiB ones. We never write; the number only sizes requests.
  conn->max_write = 1u << 20;
  conn->max_readahead = std::max(conn->max_readahead, 1u << 20);
}

// Taken shared while a reply hands out inode numbers (KernelRefs).
std::shared_lock<std::shared_mutex> HandOut(Impl* self) {
  if (!self->opts.refs) return {};
  return std::shared_lock(self->opts.refs->HandOutLock());
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guard(req, "lookup", [&] {
    Impl* self = Self(req);
    if (Status s = EnsurePopulated(self, req, parent); !s.ok()) {
      ReplyStatus(req, s, "F03 lookup populate");
      return;
    }
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.attr_timeout = self->opts.timeout_s;
    e.entry_timeout = self->opts.timeout_s;
    // A content that frees inodes may free this name between the lookup and
    // the reply: then it is looked up (and made) again, a few times at most.
    for (int attempt = 0;; ++attempt) {
      Result<Ino> ino = self->tree->Lookup(parent, name);
      if (!ino.ok() && ino.status().code() == Code::kNotFound && !Trusted(self, req)) {
        // The content would resolve the name (a store: over the network). An
        // untrusted caller gets ENOENT, which the kernel must not remember
        // for the trusted callers after it.
        e.entry_timeout = 0;
      } else if (!ino.ok() && ino.status().code() == Code::kNotFound) {
        bool cache_negative = true;
        Status miss = self->content->LookupMiss(parent, name, &cache_negative);
        if (miss.ok()) {
          ino = self->tree->Lookup(parent, name);
        } else if (miss.code() != Code::kNotFound) {
          ReplyStatus(req, miss, "F18 lookup miss");
          return;
        }
        if (!cache_negative) e.entry_timeout = 0;
      }
      if (!ino.ok()) {
        if (ino.status().code() == Code::kNotFound) {
          fuse_reply_entry(req, &e);  // ino 0: a negative entry the kernel caches
        } else {
          ReplyStatus(req, ino.status(), "F04 lookup");
        }
        return;
      }
      std::shared_lock handout = HandOut(self);
      if (self->opts.refs) {
        Result<Ino> again = self->tree->Lookup(parent, name);
        if (!again.ok() || *again != *ino) {
          if (attempt < 3) continue;
          ReplyStatus(req, Status::Transient("entry freed while looked up"), "F19 lookup");
          return;
        }
      }
      Result<Node> node = GetNode(self, *ino);
      if (!node.ok()) {
        ReplyStatus(req, node.status(), "F05 lookup get");
        return;
      }
      e.ino = *ino;
      e.generation = node->generation;
      FillStat(*ino, node->attr, &e.attr);
      // A directory still to be filled (a layer being indexed) changes its
      // attributes when it is: the kernel must not keep them.
      if (node->pending_id) e.attr_timeout = 0;
      if (self->opts.refs) self->opts.refs->Add(*ino);
      if (handout.owns_lock()) handout.unlock();
      // A reply the kernel no longer waits for (the caller was killed) gives
      // it no reference.
      if (fuse_reply_entry(req, &e) != 0 && self->opts.refs) self->opts.refs->Forget(*ino, 1);
      return;
    }
  });
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Impl* self = Self(req);
  if (self->opts.refs) self->opts.refs->Forget(ino, nlookup);
  fuse_reply_none(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Impl* self = Self(req);
  if (self->opts.refs) {
    for (size_t i = 0; i < count; ++i) self->opts.refs->Forget(forgets[i].ino, forgets[i].nlookup);
  }
  fuse_reply_none(req);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Guard(req, "getattr", [&] {
    Impl* self = Self(req);
    Result<Node> node = GetNode(self, ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F06 getattr");
      return;
    }
    struct stat st;
    FillStat(ino, node->attr, &st);
    double timeout =
        node->kind == ContentKind::kDynamic || node->pending_id ? 0 : self->opts.timeout_s;
    fuse_reply_attr(req, &st, timeout);
  });
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  Guard(req, "readlink", [&] {
    Result<Node> node = GetNode(Self(req), ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F07 readlink");
      return;
    }
    if (!S_ISLNK(node->attr.mode)) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    fuse_reply_readlink(req, node->link_target.c_str());
  });
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guard(req, "opendir", [&] {
    Impl* self = Self(req);
    if (self->no_opendir) {
      fuse_reply_err(req, ENOSYS);  // the kernel stops sending opendir
      return;
    }
    if (Status s = EnsurePopulated(self, req, ino); !s.ok()) {
      ReplyStatus(req, s, "F08 opendir populate");
      return;
    }
    Result<Node> node = GetNode(self, ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F09 opendir");
      return;
    }
    if (!S_ISDIR(node->attr.mode)) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
  });
}

void DoReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  Guard(req, plus ? "readdirplus" : "readdir", [&] {
    Impl* self = Self(req);
    if (Status s = EnsurePopulated(self, req, ino); !s.ok()) {
      ReplyStatus(req, s, "F10 readdir populate");
      return;
    }
    std::vector<char> buf(size);
    size_t pos = 0;
    // Entries of a readdirplus reply are lookups the kernel counts.
    std::shared_lock<std::shared_mutex> handout;
    if (plus) handout = HandOut(self);
    KernelRefs* refs = plus ? self->opts.refs : nullptr;
    Status s = self->tree->ReadDir(
        ino, static_cast<uint64_t>(off), [&](const DirEntry& de, uint64_t next) {
          size_t n;
          if (plus) {
            fuse_entry_param e;
            std::memset(&e, 0, sizeof e);
            bool dots = de.name == "." || de.name == "..";
            if (!dots) {
              Result<Node> node = self->tree->Get(de.ino);
              if (!node.ok()) return true;  // vanished: cannot happen, skip
              e.ino = de.ino;
              e.generation = node->generation;
              e.attr_timeout = node->pending_id ? 0 : self->opts.timeout_s;
              e.entry_timeout = self->opts.timeout_s;
              FillStat(de.ino, node->attr, &e.attr);
            } else {
              e.attr.st_ino = de.ino;
              e.attr.st_mode = de.mode;
            }
            n = fuse_add_direntry_plus(req, buf.data() + pos, size - pos, de.name.c_str(), &e,
                                       static_cast<off_t>(next));
          } else {
            struct stat st;
            std::memset(&st, 0, sizeof st);
            st.st_ino = de.ino;
            st.st_mode = de.mode;  // the type is what readdir reports
            n = fuse_add_direntry(req, buf.data() + pos, size - pos, de.name.c_str(), &st,
                                  static_cast<off_t>(next));
          }
          if (n > size - pos) return false;
          pos += n;
          if (refs && de.name != "." && de.name != "..") refs->Add(de.ino);
          return true;
        });
    if (!s.ok()) {
      ReplyStatus(req, s, "F11 readdir");
      return;
    }
    fuse_reply_buf(req, buf.data(), pos);
  });
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  DoReaddir(req, ino, size, off, false);
}
void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  DoReaddir(req, ino, size, off, true);
}
void OpReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guard(req, "open", [&] {
    Impl* self = Self(req);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
      fuse_reply_err(req, EROFS);
      return;
    }
    Result<Node> node = GetNode(self, ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F12 open");
      return;
    }
    if (S_ISDIR(node->attr.mode)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    if (node->kind == ContentKind::kDynamic) {
      Result<std::string> bytes = self->content->Generate(*node);
      if (!bytes.ok()) {
        ReplyStatus(req, bytes.status(), "F13 open generate");
        return;
      }
      uint64_t fh = self->next_fh++;
      {
        std::lock_guard lock(self->handles_mu);
        self->handles[fh] = std::make_shared<const std::string>(std::move(*bytes));
      }
      fi->fh = fh;
      fi->direct_io = 1;
    } else {
      fi->fh = 0;
      fi->keep_cache = 1;
    }
    fuse_reply_open(req, fi);
  });
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Guard(req, "read", [&] {
    Impl* self = Self(req);
    if (off < 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    if (fi->fh != 0) {
      std::shared_ptr<const std::string> snap;
      {
        std::lock_guard lock(self->handles_mu);
        auto it = self->handles.find(fi->fh);
        if (it != self->handles.end()) snap = it->second;
      }
      if (!snap) {
        // A handle of a dead predecessor (fs/session_holder.h): the file is
        // generated again, once, for this handle.
        Result<Node> node = GetNode(self, ino);
        if (!node.ok() || node->kind != ContentKind::kDynamic) {
          fuse_reply_err(req, EBADF);
          return;
        }
        Result<std::string> bytes = self->content->Generate(*node);
        if (!bytes.ok()) {
          ReplyStatus(req, bytes.status(), "F19 read generate");
          return;
        }
        std::lock_guard lock(self->handles_mu);
        auto [it, added] = self->handles.emplace(
            fi->fh, std::make_shared<const std::string>(std::move(*bytes)));
        snap = it->second;
      }
      size_t start = std::min<size_t>(static_cast<size_t>(off), snap->size());
      size_t n = std::min(size, snap->size() - start);
      fuse_reply_buf(req, snap->data() + start, n);
      return;
    }
    Result<Node> node = GetNode(self, ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F14 read");
      return;
    }
    // One reply buffer per worker thread, reused, never zeroed: a fresh
    // 1 MiB vector per read cost page faults and a memset in every profile.
    thread_local std::unique_ptr<uint8_t[]> buf;
    thread_local size_t capacity = 0;
    if (size > capacity) {
      buf.reset(new uint8_t[size]);
      capacity = size;
    }
    Result<size_t> n =
        self->content->Read(*node, static_cast<uint64_t>(off), std::span<uint8_t>(buf.get(), size));
    if (!n.ok()) {
      LOG_WARN("EIO (F15 read): " + n.status().ToString());
      fuse_reply_err(req, ReadFailureErrno(n.status()));
      return;
    }
    fuse_reply_buf(req, reinterpret_cast<const char*>(buf.get()), *n);
  });
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Guard(req, "release", [&] {
    if (fi->fh != 0) {
      Impl* self = Self(req);
      std::lock_guard lock(self->handles_mu);
      self->handles.erase(fi->fh);
    }
    fuse_reply_err(req, 0);
  });
}

// An opaque directory of a layer tree carries trusted.overlay.opaque (for
// overlayfs mounted by root) and user.overlay.opaque (for rootless, userxattr
// mounts). overlayfs hides only its own prefix from the merged view, so a
// container over a root mount would see the user one: root callers (overlayfs
// reads lower layers with its mounter's credentials) are not shown it.
bool XattrShown(const Node& node, std::string_view name, uid_t caller) {
  if (caller != 0 || name != "user.overlay.opaque" || !node.xattrs) return true;
  for (const auto& kv : *node.xattrs) {
    if (kv.first == "trusted.overlay.opaque") return false;
  }
  return true;
}

void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  Guard(req, "getxattr", [&] {
    Result<Node> node = GetNode(Self(req), ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F16 getxattr");
      return;
    }
    const uid_t caller = fuse_req_ctx(req)->uid;
    if (node->xattrs && XattrShown(*node, name, caller)) {
      for (const auto& [k, v] : *node->xattrs) {
        if (k != name) continue;
        if (size == 0) {
          fuse_reply_xattr(req, v.size());
        } else if (size < v.size()) {
          fuse_reply_err(req, ERANGE);
        } else {
          fuse_reply_buf(req, v.data(), v.size());
        }
        return;
      }
    }
    fuse_reply_err(req, ENODATA);
  });
}

void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Guard(req, "listxattr", [&] {
    Result<Node> node = GetNode(Self(req), ino);
    if (!node.ok()) {
      ReplyStatus(req, node.status(), "F17 listxattr");
      return;
    }
    std::string names;
    const uid_t caller = fuse_req_ctx(req)->uid;
    if (node->xattrs) {
      for (const auto& kv : *node->xattrs) {
        if (!XattrShown(*node, kv.first, caller)) continue;
        names += kv.first;
        names.push_back('\0');
      }
    }
    if (size == 0) {
      fuse_reply_xattr(req, names.size());
    } else if (size < names.size()) {
      fuse_reply_err(req, ERANGE);
    } else {
      fuse_reply_buf(req, names.data(), names.size());
    }
  });
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  Guard(req, "statfs", [&] {
    struct statvfs sv;
    std::memset(&sv, 0, sizeof sv);
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_files = Self(req)->tree->Count();
    sv.f_namemax = 255;
    sv.f_flag = ST_RDONLY;
    fuse_reply_statfs(req, &sv);
  });
}

// Create and rmdir are notifications to the content (a store counts the
// uses of a layer): only trusted callers may send them.
void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t, fuse_file_info*) {
  Guard(req, "create", [&] {
    Impl* self = Self(req);
    fuse_reply_err(req, Trusted(self, req) ? self->content->CreateErrno(parent, name) : EACCES);
  });
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t, dev_t) {
  Guard(req, "mknod", [&] {
    Impl* self = Self(req);
    fuse_reply_err(req, Trusted(self, req) ? self->content->CreateErrno(parent, name) : EACCES);
  });
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guard(req, "rmdir", [&] {
    Impl* self = Self(req);
    fuse_reply_err(req, Trusted(self, req) ? self->content->RmdirErrno(parent, name) : EACCES);
  });
}

void OpAccess(fuse_req_t req, fuse_ino_t, int mask) {
  fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof ops);
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.readlink = OpReadlink;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.releasedir = OpReleasedir;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.release = OpRelease;
  ops.getxattr = OpGetxattr;
  ops.listxattr = OpListxattr;
  ops.statfs = OpStatfs;
  ops.access = OpAccess;
  ops.create = OpCreate;
  ops.mknod = OpMknod;
  ops.rmdir = OpRmdir;
  return ops;
}();

// fuse_args from a list of strings; owns nothing but the vector of pointers.
struct ArgvHolder {
  std::vector<std::string> strings;
  std::vector<char*> ptrs;
  fuse_args Args() {
    ptrs.clear();
    for (auto& s : strings) ptrs.push_back(s.data());
    return FUSE_ARGS_INIT(static_cast<int>(ptrs.size()), ptrs.data());
  }
};

// The mount's bdi read_ahead_kb file, or "" (the device number comes from
// /proc/self/mountinfo: a stat() of the mountpoint would wait for the loop).
// The "major:minor" of the FUSE mount on `mountpoint` (the last, topmost,
// fuse entry for that path in /proc/self/mountinfo), or "".
std::string MountDev(const std::string& mountpoint) {
  char real[PATH_MAX];
  if (!realpath(mountpoint.c_str(), real)) return "";
  FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (!f) return "";
  char line[4096];
  std::string dev;
  while (std::fgets(line, sizeof line, f)) {
    // "36 35 0:52 / /mnt/x ro,... - fuse.regfs regfs rw,..."
    char devbuf[64], root[PATH_MAX], mnt[PATH_MAX];
    int id, parent;
    if (std::sscanf(line, "%d %d %63s %4095s %4095s", &id, &parent, devbuf, root, mnt) == 5 &&
        std::string(mnt) == real && std::strstr(line, "fuse")) {
      dev = devbuf;  // the last match is the top mount
    }
  }
  std::fclose(f);
  return dev;
}

// Whether a mount of device `dev` ("major:minor") is still in this mount
// namespace's table. After `umount` (plain or lazy) it is not, even while a
// request in progress keeps the FUSE connection itself alive.
bool MountDevPresent(const std::string& dev) {
  FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (!f) return true;  // cannot tell: assume mounted
  char line[4096];
  bool present = false;
  while (!present && std::fgets(line, sizeof line, f)) {
    char devbuf[64];
    int id, parent;
    present = std::sscanf(line, "%d %d %63s", &id, &parent, devbuf) == 3 && dev == devbuf;
  }
  std::fclose(f);
  return present;
}

std::string ReadAheadPath(const std::string& dev) {
  return dev.empty() ? "" : "/sys/class/bdi/" + dev + "/read_ahead_kb";
}

// Sets the mount's read-ahead (root only; best effort).
void WriteReadAhead(const std::string& path, unsigned kib) {
  if (path.empty()) return;
  FILE* ra = std::fopen(path.c_str(), "we");
  if (!ra) {
    LOG_INFO("cannot raise read-ahead (" + path + "): " + std::strerror(errno));
    return;
  }
  std::fprintf(ra, "%u\n", kib);
  std::fclose(ra);
}

}  // namespace

void KernelRefs::Add(Ino ino, uint64_t n) {
  std::lock_guard lock(mu_);
  counts_[ino] += n;
}

void KernelRefs::Forget(Ino ino, uint64_t n) {
  std::lock_guard lock(mu_);
  auto it = counts_.find(ino);
  if (it == counts_.end()) return;
  if (it->second <= n) {
    counts_.erase(it);
  } else {
    it->second -= n;
  }
}

bool KernelRefs::Known(Ino ino) const {
  std::lock_guard lock(mu_);
  return counts_.count(ino) != 0;
}

size_t KernelRefs::Size() const {
  std::lock_guard lock(mu_);
  return counts_.size();
}

bool FuseDaemon::InvalidateEntry(Ino parent, std::string_view name) {
  std::lock_guard lock(impl_->mount_mu);
  if (!impl_->mounted || !impl_->se) return false;
  return fuse_lowlevel_notify_inval_entry(impl_->se.get(), parent, name.data(), name.size()) == 0;
}

FuseDaemon::FuseDaemon(Tree* tree, FsContent* content, FuseOptions opts)
    : impl_(std::make_unique<Impl>()) {
  impl_->tree = tree;
  impl_->content = content;
  impl_->opts = std::move(opts);
}

FuseDaemon::~FuseDaemon() { Unmount(); }

Status FuseDaemon::Mount() {
  ArgvHolder argv;
  argv.strings.push_back("regfs");
  std::string o = std::string(impl_->opts.read_only ? "ro," : "") +
                  "default_permissions,fsname=" + impl_->opts.fsname + ",subtype=regfs";
  for (const auto& m : impl_->opts.mount_opts) o += "," + m;
  argv.strings.push_back("-o");
  argv.strings.push_back(o);
  if (impl_->opts.debug) argv.strings.push_back("-d");
  fuse_args args = argv.Args();
  fuse_session* se = fuse_session_new(&args, &kOps, sizeof kOps, impl_.get());
  fuse_opt_free_args(&args);
  if (!se) return Status::InvalidArgument("cannot create FUSE session (bad -o option?)");
  impl_->se.reset(se);
  if (impl_->opts.takeover_fd >= 0) {
    RETURN_IF_ERROR(TakeOver());
  } else {
    if (fuse_session_mount(se, impl_->opts.mountpoint.c_str()) != 0) {
      impl_->se.reset();
      return Status::IoError("cannot mount on " + impl_->opts.mountpoint +
                             " (is /dev/fuse present and the directory empty?)");
    }
    // Our own I/O on the same fd: it keeps the INIT request for a holder.
    if (int rc = fuse_session_custom_io(se, &kIo, fuse_session_fd(se)); rc != 0) {
      fuse_session_unmount(se);
      impl_->se.reset();
      return Status::IoError(std::string("fuse_session_custom_io: ") + std::strerror(-rc));
    }
  }
  // The kernel sets the read-ahead from the INIT reply, after this; the
  // first request after INIT applies ours (see Guard).
  impl_->mount_dev = MountDev(impl_->opts.mountpoint);
  if (impl_->opts.read_ahead_kb > 0) impl_->read_ahead_path = ReadAheadPath(impl_->mount_dev);
  std::lock_guard lock(impl_->mount_mu);
  impl_->mounted = true;
  return Status::Ok();
}

// A successor takes the session over: no mount, no INIT from the kernel.
// libfuse 3.14 has no call to start a session that is already initialized,
// and answers every request before INIT with EIO; replaying the kernel's
// INIT request (kept by the holder) sets libfuse's connection state (the
// protocol version, the capabilities, the buffer size) exactly as the first
// daemon had it, and OpInit sets ours. The reply goes nowhere (IoWritev).
Status FuseDaemon::TakeOver() {
  Impl& d = *impl_;
  fuse_session* se = d.se.get();
  int fd = d.opts.takeover_fd;
  d.opts.takeover_fd = -1;
  if (int rc = fuse_session_custom_io(se, &kIo, fd); rc != 0) {
    close(fd);
    d.se.reset();
    return Status::IoError(std::string("fuse_session_custom_io: ") + std::strerror(-rc));
  }
  // From here the session owns fd (fuse_session_destroy closes it).
  const std::string& init = d.opts.takeover_init;
  d.took_over = true;
  if (init.empty()) {
    // The dead daemon had not answered INIT: the kernel's INIT request is
    // still queued (or, read and not answered, sent again on the resend
    // below), and this daemon answers it as a first one would.
    d.adopted = true;
    if (d.opts.resend_in_flight) {
      constexpr int32_t kNotifyResend = 7;  // FUSE_NOTIFY_RESEND, see below
      fuse_out_header out{sizeof(fuse_out_header), kNotifyResend, 0};
      (void)!write(fd, &out, sizeof out);  // best effort: INIT is mostly still queued
    }
    return Status::Ok();
  }
  fuse_in_header h;
  if (init.size() < sizeof h + sizeof(fuse_init_in) ||
      (std::memcpy(&h, init.data(), sizeof h), h.opcode != FUSE_INIT)) {
    d.se.reset();
    return Status::InvalidArgument("takeover: not an INIT request");
  }
  std::vector<char> copy(init.begin(), init.end());
  fuse_buf buf;
  std::memset(&buf, 0, sizeof buf);
  buf.mem = copy.data();
  buf.size = copy.size();
  d.replaying_init = true;
  fuse_session_process_buf(se, &buf);
  d.replaying_init = false;
  if (fuse_session_exited(se)) {
    d.se.reset();
    return Status::IoError("takeover: libfuse refused the replayed INIT");
  }
  if (d.opts.resend_in_flight) {
    // FUSE_NOTIFY_RESEND (linux/fuse.h 7.40; Debian 12's headers predate it).
    constexpr int32_t kNotifyResend = 7;
    fuse_out_header out{sizeof(fuse_out_header), kNotifyResend, 0};
    if (write(fd, &out, sizeof out) != static_cast<ssize_t>(sizeof out)) {
      LOG_WARN(std::string("takeover: the kernel does not resend the requests the dead ") +
               "daemon had read (FUSE_NOTIFY_RESEND: " + std::strerror(errno) +
               "); their callers wait until the mount ends");
    }
  }
  return Status::Ok();
}

Status FuseDaemon::Loop(bool install_signal_handlers) {
  if (!impl_->se) return Status::InvalidArgument("not mounted");
  fuse_session* se = impl_->se.get();
  if (install_signal_handlers && fuse_set_signal_handlers(se) != 0) {
    return Status::IoError("cannot install signal handlers");
  }
  std::unique_ptr<fuse_loop_config, LoopConfigDeleter> cfg(fuse_loop_cfg_create());
  fuse_loop_cfg_set_max_threads(cfg.get(), static_cast<unsigned>(impl_->opts.max_threads));
  // Keep the workers: a thread that exits after each burst and is created
  // again for the next costs more than the request it serves.
  fuse_loop_cfg_set_idle_threads(cfg.get(), static_cast<unsigned>(impl_->opts.max_threads));
  fuse_loop_cfg_set_clone_fd(cfg.get(), 0);
  // Watches for the end of the session: a worker busy in a long request
  // (an index build, a download) would otherwise hold up the loop's return
  // until it finished by itself.
  std::mutex watch_mu;
  std::condition_variable watch_cv;
  bool loop_done = false;
  std::once_flag ended;
  auto end_session = [&] {
    if (impl_->opts.on_session_end) std::call_once(ended, impl_->opts.on_session_end);
  };
  // A request in progress (a lookup waiting for an index build) keeps the
  // kernel's connection alive after `umount`, so the session does not end
  // by itself: the mount leaving the mount table says it too.
  std::thread watcher([&] {
    std::unique_lock lock(watch_mu);
    for (int tick = 0; !loop_done; ++tick) {
      bool unmounted = tick % 2 == 1 && !impl_->mount_dev.empty() &&
                       !MountDevPresent(impl_->mount_dev);
      if (fuse_session_exited(se) || unmounted) {
        lock.unlock();
        end_session();
        return;
      }
      watch_cv.wait_for(lock, std::chrono::milliseconds(100));
    }
  });
  int rc = fuse_session_loop_mt(se, cfg.get());
  {
    std::lock_guard lock(watch_mu);
    loop_done = true;
  }
  watch_cv.notify_all();
  watcher.join();
  end_session();
  if (install_signal_handlers) fuse_remove_signal_handlers(se);
  Unmount();
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP) {
    return Status::IoError("FUSE loop ended with " + std::to_string(rc));
  }
  return Status::Ok();
}

void FuseDaemon::Exit() {
  if (!impl_->se) return;
  fuse_session_exit(impl_->se.get());
  Unmount();  // wakes the loop threads blocked reading /dev/fuse
}

void FuseDaemon::Unmount() {
  std::lock_guard lock(impl_->mount_mu);
  if (impl_->mounted && impl_->se) {
    if (impl_->took_over) {
      // libfuse did not mount this session, so it does not unmount it: as
      // fuse_kern_unmount does, detach it unless the kernel ended it already.
      pollfd p{fuse_session_fd(impl_->se.get()), 0, 0};
      bool ended = poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
      if (!ended && umount2(impl_->opts.mountpoint.c_str(), MNT_DETACH) != 0 && errno == EPERM) {
        (void)UnmountPath(impl_->opts.mountpoint);
      }
    } else {
      fuse_session_unmount(impl_->se.get());
    }
    impl_->mounted = false;
  }
}

int FuseDaemon::SessionFd() const {
  return impl_->se ? fuse_session_fd(impl_->se.get()) : -1;
}

Status UnmountPath(const std::string& mountpoint) {
  auto run = [&](const std::vector<const char*>& argv) -> int {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
      execvp(argv[0], const_cast<char* const*>(argv.data()));
      _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  if (run({"fusermount3", "-u", "-q", mountpoint.c_str(), nullptr}) == 0) return Status::Ok();
  // A dead daemon leaves "Transport endpoint is not connected": detach it.
  if (run({"fusermount3", "-u", "-z", "-q", mountpoint.c_str(), nullptr}) == 0) {
    return Status::Ok();
  }
  return Status::IoError("cannot unmount " + mountpoint + " (not a regfs mount, or busy?)");
}

}  // namespace regfs
