// Test layers holding every kind of tar entry regfs must show: used by the
// layer-tree and rootfs comparisons against bsdtar and umoci.
#ifndef REGFS_TESTS_SUPPORT_RICH_ENTRIES_H_
#define REGFS_TESTS_SUPPORT_RICH_ENTRIES_H_

#include <string_view>
#include <vector>

#include "tests/support/tar_writer.h"

namespace regfs::testing {

// Regular files (empty, small, a few MiB spanning gzip checkpoints), dirs
// with odd modes, symlinks (long targets too), hard links (several to one
// inode), char/block devices, a fifo, setuid/setgid/sticky, numeric owners,
// ns mtimes, PAX xattrs (user.*, trusted.*, security.capability), long names
// in PAX and GNU form. `tag` varies the content.
std::vector<TarEntry> RichEntries(std::string_view tag);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_RICH_ENTRIES_H_
