#include "tests/support/rich_entries.h"

#include <random>
#include <string>

namespace regfs::testing {

std::vector<TarEntry> RichEntries(std::string_view tag_view) {
  std::string tag(tag_view);
  std::vector<TarEntry> e;
  auto add = [&](TarEntry t, uint64_t uid = 0, uint64_t gid = 0, uint32_t nsec = 0) {
    t.uid = uid;
    t.gid = gid;
    t.mtime_nsec = nsec;
    e.push_back(std::move(t));
  };
  add(TarEntry::Dir("etc"));
  add(TarEntry::File("etc/os-release", "NAME=\"regfs " + tag + "\"\nID=regfs\n"), 0, 0, 5);
  add(TarEntry::File("etc/empty", ""));
  add(TarEntry::Dir("usr", 0755));
  add(TarEntry::Dir("usr/bin", 0711), 0, 0, 999999999);
  add(TarEntry::File("usr/bin/suid", "suid " + tag, 04755), 0, 0, 1);
  add(TarEntry::File("usr/bin/sgid", "sgid " + tag, 02711), 0, 50);
  add(TarEntry::Dir("usr/share", 0755));
  add(TarEntry::Dir("srv", 0700), 1234, 5678, 42);
  add(TarEntry::File("srv/owned", "owned by 1234:5678\n", 0640), 1234, 5678, 314159265);
  add(TarEntry::Dir("tmp", 01777));
  add(TarEntry::Fifo("tmp/fifo", 0600));
  add(TarEntry::Dir("dev"));
  add(TarEntry::CharDev("dev/null", 1, 3, 0666));
  add(TarEntry::CharDev("dev/tty0", 4, 0, 0620), 0, 5);
  add(TarEntry::BlockDev("dev/sda", 8, 0, 0660), 0, 6);
  add(TarEntry::BlockDev("dev/big-minor", 259, 65537, 0600));
  // Several MiB of incompressible and compressible data, so gzip checkpoints
  // (every 4 MiB of output) fall inside files.
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(tag)));
  std::string big(6 << 20, '\0');
  for (auto& c : big) c = static_cast<char>(rng());
  add(TarEntry::File("usr/share/random.bin", big));
  std::string text;
  while (text.size() < (5 << 20)) text += "line " + std::to_string(text.size()) + " " + tag + "\n";
  add(TarEntry::File("usr/share/text.txt", text));
  add(TarEntry::File("usr/bin/tool", "#!/bin/sh\necho " + tag + "\n", 0755));
  add(TarEntry::Hardlink("usr/bin/tool-hard1", "usr/bin/tool"));
  add(TarEntry::Hardlink("usr/bin/tool-hard2", "usr/bin/tool"));
  add(TarEntry::Symlink("usr/bin/tool-sym", "tool"));
  add(TarEntry::Symlink("etc/dangling", "/nonexistent/target"));
  add(TarEntry::Symlink("etc/long-link", "/" + std::string(200, 'l') + "/end"));
  TarEntry cap = TarEntry::File("usr/bin/ping", "ping " + tag, 0755);
  // VFS_CAP_REVISION_2 with cap_net_raw (bit 13) permitted and effective.
  cap.xattrs["security.capability"] =
      std::string("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                  20);
  add(cap);
  TarEntry ux = TarEntry::File("etc/xattrs", "xattrs " + tag);
  ux.xattrs["user.regfs.one"] = "1";
  ux.xattrs["user.regfs.binary"] = std::string("\0\x01\x02\xff", 4);
  ux.xattrs["trusted.regfs"] = "t";
  add(ux);
  TarEntry dx = TarEntry::Dir("etc/xdir");
  dx.xattrs["user.dir"] = "d";
  add(dx);
  add(TarEntry::Dir("long"));
  std::string seg(90, 'p');
  add(TarEntry::Dir("long/" + seg));
  add(TarEntry::File("long/" + seg + "/" + std::string(150, 'x') + ".pax", "pax long " + tag));
  TarEntry gnu = TarEntry::File("long/" + seg + "/" + std::string(130, 'g') + ".gnu", "gnu long");
  gnu.long_names = LongNameStyle::kGnu;
  add(gnu);
  TarEntry gnul = TarEntry::Symlink("long/gnu-link", "/" + std::string(180, 'k'));
  gnul.long_names = LongNameStyle::kGnu;
  add(gnul);
  add(TarEntry::File("long/" + seg + "/" + std::string(100, 'u') + ".ustar", "prefix"));
  e.back().long_names = LongNameStyle::kUstarPrefix;
  return e;
}

}  // namespace regfs::testing
