#include "tests/support/tree_snapshot.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <sstream>

#include "reader/base/digest.h"

namespace regfs::testing {
namespace {

std::string HashFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return "<open failed: " + std::to_string(errno) + ">";
  Sha256 h;
  char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) h.Update(buf, static_cast<size_t>(n));
  close(fd);
  if (n < 0) return "<read failed: " + std::to_string(errno) + ">";
  return h.FinishDigest();
}

std::map<std::string, std::string> ReadXattrs(const std::string& path,
                                              const SnapshotOptions& opts) {
  std::map<std::string, std::string> out;
  ssize_t len = llistxattr(path.c_str(), nullptr, 0);
  if (len <= 0) return out;
  std::string names(static_cast<size_t>(len), '\0');
  len = llistxattr(path.c_str(), names.data(), names.size());
  if (len <= 0) return out;
  for (size_t pos = 0; pos < static_cast<size_t>(len);) {
    std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    bool skip = false;
    for (const auto& p : opts.ignore_xattr_prefixes) skip = skip || name.rfind(p, 0) == 0;
    if (skip) continue;
    ssize_t vlen = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    std::string v(vlen > 0 ? static_cast<size_t>(vlen) : 0, '\0');
    if (vlen > 0) vlen = lgetxattr(path.c_str(), name.c_str(), v.data(), v.size());
    out[name] = vlen >= 0 ? v.substr(0, static_cast<size_t>(vlen)) : "<error>";
  }
  return out;
}

void Walk(const std::string& root, const std::string& rel, const SnapshotOptions& opts,
          TreeSnapshot* snap, std::map<std::pair<dev_t, ino_t>, std::string>* inodes) {
  std::string path = rel.empty() ? root : root + "/" + rel;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    (*snap)[rel].link_target = "<lstat failed: " + std::to_string(errno) + ">";
    return;
  }
  PathState ps;
  ps.mode = st.st_mode;
  ps.uid = st.st_uid;
  ps.gid = st.st_gid;
  ps.nlink = S_ISDIR(st.st_mode) ? 0 : static_cast<uint32_t>(st.st_nlink);
  ps.size = S_ISDIR(st.st_mode) && !opts.dir_sizes ? 0 : static_cast<uint64_t>(st.st_size);
  ps.mtime_ns = S_ISDIR(st.st_mode) && !opts.dir_mtimes
                    ? 0
                    : st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) ps.rdev = st.st_rdev;
  if (S_ISLNK(st.st_mode)) {
    char buf[8192];
    ssize_t n = readlink(path.c_str(), buf, sizeof buf);
    ps.link_target.assign(buf, n > 0 ? static_cast<size_t>(n) : 0);
  }
  if (S_ISREG(st.st_mode)) {
    if (opts.content) ps.content_sha256 = HashFile(path);
    if (st.st_nlink > 1) {
      auto key = std::make_pair(st.st_dev, st.st_ino);
      auto it = inodes->find(key);
      if (it == inodes->end()) it = inodes->emplace(key, rel).first;
      ps.hardlink_group = it->second;
    }
  }
  if (opts.xattrs) ps.xattrs = ReadXattrs(path, opts);
  (*snap)[rel] = ps;
  if (!S_ISDIR(st.st_mode)) return;
  DIR* d = opendir(path.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  for (const auto& n : names) {
    std::string child = rel.empty() ? n : rel + "/" + n;
    if (opts.ignore_paths.count(child)) continue;
    Walk(root, child, opts, snap, inodes);
  }
}

std::string Describe(const PathState& s) {
  std::ostringstream o;
  o << std::oct << "mode=0" << s.mode << std::dec << " uid=" << s.uid << " gid=" << s.gid
    << " size=" << s.size << " mtime_ns=" << s.mtime_ns;
  if (s.rdev) o << " rdev=" << s.rdev;
  if (!s.link_target.empty()) o << " link=" << s.link_target;
  if (!s.content_sha256.empty()) o << " sha=" << s.content_sha256.substr(7, 12);
  if (s.nlink > 1) o << " nlink=" << s.nlink << " group=" << s.hardlink_group;
  for (const auto& [k, v] : s.xattrs) o << " xattr:" << k << "=" << v.size() << "B";
  return o.str();
}

}  // namespace

TreeSnapshot SnapshotTree(const std::string& root, const SnapshotOptions& opts) {
  TreeSnapshot snap;
  std::map<std::pair<dev_t, ino_t>, std::string> inodes;
  Walk(root, "", opts, &snap, &inodes);
  // Name each hard-link group by its smallest path, independent of walk order.
  std::map<std::string, std::string> group_min;
  for (const auto& [p, s] : snap) {
    if (s.hardlink_group.empty()) continue;
    auto it = group_min.find(s.hardlink_group);
    if (it == group_min.end() || p < it->second) group_min[s.hardlink_group] = p;
  }
  for (auto& [p, s] : snap) {
    if (!s.hardlink_group.empty()) s.hardlink_group = group_min[s.hardlink_group];
  }
  return snap;
}

std::string DiffSnapshots(const TreeSnapshot& want, const TreeSnapshot& got,
                          const SnapshotOptions&, size_t max_lines) {
  std::ostringstream o;
  size_t lines = 0;
  auto line = [&](const std::string& s) {
    if (lines++ < max_lines) o << s << "\n";
  };
  for (const auto& [p, w] : want) {
    auto it = got.find(p);
    if (it == got.end()) {
      line("missing: '" + p + "' (" + Describe(w) + ")");
      continue;
    }
    const PathState& g = it->second;
    bool same = w.mode == g.mode && w.uid == g.uid && w.gid == g.gid && w.size == g.size &&
                w.mtime_ns == g.mtime_ns && w.rdev == g.rdev && w.nlink == g.nlink &&
                w.link_target == g.link_target && w.content_sha256 == g.content_sha256 &&
                w.xattrs == g.xattrs && w.hardlink_group == g.hardlink_group;
    if (!same) line("differs: '" + p + "'\n   want " + Describe(w) + "\n   got  " + Describe(g));
  }
  for (const auto& [p, g] : got) {
    if (!want.count(p)) line("extra: '" + p + "' (" + Describe(g) + ")");
  }
  if (lines > max_lines) o << "... " << (lines - max_lines) << " more\n";
  return o.str();
}

}  // namespace regfs::testing
