#include "reader/layer/tar_reader.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>

#include "reader/base/log.h"

namespace regfs {
namespace {

uint64_t RoundUpBlock(uint64_t n) { return (n + kTarBlockSize - 1) / kTarBlockSize * kTarBlockSize; }

std::string Printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 200)) out.push_back((c >= 0x20 && c < 0x7f) ? c : '?');
  if (s.size() > 200) out += "...";
  return out;
}

Result<uint64_t> ParseDecimal(std::string_view s, const char* what) {
  if (s.empty() || s.size() > 19) return Status::Corrupt(std::string("pax: bad ") + what);
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return Status::Corrupt(std::string("pax: bad ") + what);
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// Applies one PAX record to the entry under construction.
struct Overrides {
  std::optional<std::string> path, linkpath, uname, gname;
  std::optional<uint64_t> size, uid, gid;
  std::optional<std::pair<int64_t, uint32_t>> mtime;
  std::vector<std::pair<std::string, std::string>> xattrs;
  bool sparse = false;
};

// Sets an xattr (a later record of the same name wins). Past kMaxXattrs
// names, new names are dropped here already, so that a PAX block of many
// tiny records costs O(records * kMaxXattrs), not O(records^2).
void SetXattr(std::vector<std::pair<std::string, std::string>>* xattrs, std::string name,
              std::string value, uint64_t* dropped) {
  for (auto& [n, v] : *xattrs) {
    if (n == name) {
      v = std::move(value);
      return;
    }
  }
  if (xattrs->size() >= TarReader::kMaxXattrs) {
    ++*dropped;
    return;
  }
  xattrs->emplace_back(std::move(name), std::move(value));
}

// Keeps the xattrs a Linux unpack could set (XATTR_NAME_MAX, XATTR_SIZE_MAX)
// within our per-entry total, in archive order. Returns how many went.
uint64_t BoundXattrs(std::vector<std::pair<std::string, std::string>>* xattrs) {
  uint64_t dropped = 0;
  size_t total = 0;
  std::vector<std::pair<std::string, std::string>> kept;
  for (auto& [n, v] : *xattrs) {
    if (n.size() > TarReader::kMaxXattrName || v.size() > TarReader::kMaxXattrValue ||
        n.size() + v.size() > TarReader::kMaxXattrBytes - total) {
      ++dropped;
      continue;
    }
    total += n.size() + v.size();
    kept.emplace_back(std::move(n), std::move(v));
  }
  *xattrs = std::move(kept);
  return dropped;
}

Status ApplyPax(const PaxRecords& records, Overrides* o, uint64_t* dropped_xattrs) {
  constexpr std::string_view kXattr = "SCHILY.xattr.";
  for (const auto& [key, value] : records) {
    if (key == "path") {
      o->path = value;
    } else if (key == "linkpath") {
      o->linkpath = value;
    } else if (key == "uname") {
      o->uname = value;
    } else if (key == "gname") {
      o->gname = value;
    } else if (key == "size") {
      ASSIGN_OR_RETURN(uint64_t v, ParseDecimal(value, "size"));
      if (v > kMaxTarEntrySize) return Status::Corrupt("pax: absurd size " + value);
      o->size = v;
    } else if (key == "uid") {
      ASSIGN_OR_RETURN(o->uid, ParseDecimal(value, "uid"));
    } else if (key == "gid") {
      ASSIGN_OR_RETURN(o->gid, ParseDecimal(value, "gid"));
    } else if (key == "mtime") {
      ASSIGN_OR_RETURN(o->mtime, ParsePaxTime(value));
    } else if (key.size() > kXattr.size() && key.compare(0, kXattr.size(), kXattr) == 0) {
      SetXattr(&o->xattrs, key.substr(kXattr.size()), value, dropped_xattrs);
    } else if (key.compare(0, 11, "GNU.sparse.") == 0) {
      o->sparse = true;
    }
    // atime, ctime, comment, charset, LIBARCHIVE.* (bsdtar writes SCHILY.xattr
    // alongside its own xattr keys) and vendor keys are ignored.
  }
  return Status::Ok();
}

// Why a Linux unpack would fail to create `raw` (cleaned: `clean`), or null.
const char* PathProblem(std::string_view raw, const std::optional<std::string>& clean) {
  if (raw.find('\0') != std::string_view::npos) return "has a NUL byte";
  if (!clean) return "has a '..' component";
  if (clean->size() > TarReader::kMaxPath) return "is longer than 4096 bytes";
  size_t start = 0;
  while (start <= clean->size()) {
    size_t slash = clean->find('/', start);
    if (slash == std::string::npos) slash = clean->size();
    if (slash - start > TarReader::kMaxNameComponent) {
      return "has a component longer than 255 bytes";
    }
    start = slash + 1;
  }
  return nullptr;
}

// Go's archive/tar (isHeaderOnlyType, applied after a v7 '\0' entry named
// "x/" became a directory) gives these types no data whatever their size
// says, and containers/storage extracts what it reads, so that is podman's
// view and ours. bsdtar 3.6 agrees except for hard links in pax archives
// (it reads their data); GNU tar 1.34 agrees when extracting but `tar t`
// skips `size` bytes after symlinks, devices, fifos and v7 directories.
bool IsHeaderOnly(char typeflag, std::string_view name) {
  switch (typeflag) {
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
      return true;
    case '\0':
      return !name.empty() && name.back() == '/';
    default:
      return false;
  }
}

}  // namespace

void TarReader::ResetPending() {
  local_pax_.clear();
  local_pax_bytes_ = 0;
  skip_next_.clear();
  long_name_.clear();
  long_link_.clear();
  have_long_name_ = have_long_link_ = false;
}

void TarReader::Skipped(const std::string& why) {
  ++stats_.skipped;
  // A hostile layer may hold millions of these; the log keeps the first 100.
  if (++warnings_ <= 100) {
    LOG_WARN("tar: skipping " + why);
  } else {
    if (warnings_ == 101) LOG_WARN("tar: more than 100 entries skipped; the rest at debug level");
    LOG_DEBUG("tar: skipping " + why);
  }
}

Status TarReader::SkipData(uint64_t n) {
  if (n == 0) return Status::Ok();
  ASSIGN_OR_RETURN(uint64_t got, stream_->Skip(n));
  if (got != n) {
    return Status::Corrupt("tar: entry data truncated at offset " +
                           std::to_string(stream_->Position()));
  }
  return Status::Ok();
}

// Callers bound `size` first (it is never more than kMaxPaxSize).
Result<std::string> TarReader::ReadBlockData(uint64_t size, const char* what) {
  std::string data;
  std::array<uint8_t, 16384> buf;
  uint64_t left = size;
  while (left > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    ASSIGN_OR_RETURN(size_t got, stream_->Read(std::span(buf.data(), want)));
    if (got != want) return Status::Corrupt(std::string("tar: ") + what + " block truncated");
    data.append(reinterpret_cast<const char*>(buf.data()), got);
    left -= got;
  }
  RETURN_IF_ERROR(SkipData(RoundUpBlock(size) - size));
  return data;
}

Result<bool> TarReader::Next(TarEntry* out) {
  std::array<uint8_t, kTarBlockSize> block;
  while (!done_) {
    RETURN_IF_ERROR(SkipData(pending_skip_));
    pending_skip_ = 0;

    const uint64_t header_offset = stream_->Position();
    ASSIGN_OR_RETURN(size_t got, stream_->Read(block));
    if (got == 0) {
      LOG_WARN("tar: archive ends at offset " + std::to_string(header_offset) +
               " without an end-of-archive block; accepted");
      done_ = true;
      break;
    }
    if (got != kTarBlockSize) {
      return Status::Corrupt("tar: header block truncated at offset " +
                             std::to_string(header_offset));
    }
    if (IsZeroBlock(block)) {
      // As GNU tar and libarchive: the first zero block ends the archive.
      stats_.saw_end_marker = true;
      done_ = true;
      break;
    }
    Result<RawTarHeader> parsed = ParseTarHeader(block);
    if (!parsed.ok()) {
      return parsed.status().Annotate("tar header at offset " + std::to_string(header_offset));
    }
    RawTarHeader& h = *parsed;
    const std::string at = " at offset " + std::to_string(header_offset);

    switch (h.typeflag) {
      case 'x':
      case 'X': {
        // Several 'x' blocks before one entry add up; past the cap the rest
        // are skipped unread and the entry they describe goes too.
        if (local_pax_bytes_ > kMaxPaxSize || h.size > kMaxPaxSize - local_pax_bytes_) {
          RETURN_IF_ERROR(SkipData(RoundUpBlock(h.size)));
          local_pax_.clear();
          local_pax_bytes_ = kMaxPaxSize + 1;
          if (skip_next_.empty()) skip_next_ = "its PAX headers are over 1 MiB";
          continue;
        }
        local_pax_bytes_ += h.size;
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, "pax header"));
        ASSIGN_OR_RETURN(PaxRecords recs, ParsePaxRecords(data));
        for (auto& r : recs) local_pax_.push_back(std::move(r));
        continue;
      }
      case 'g': {
        // Not applied to entries (see tar_reader.h); read only within the cap.
        if (h.size > kMaxGlobalPaxSize - global_pax_bytes_) {
          RETURN_IF_ERROR(SkipData(RoundUpBlock(h.size)));
          ++stats_.ignored_global_pax;
          Skipped("global PAX header of " + std::to_string(h.size) + " bytes" + at +
                  ": global headers over 64 KiB in all are ignored");
          continue;
        }
        global_pax_bytes_ += h.size;
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, "pax global header"));
        ASSIGN_OR_RETURN(PaxRecords recs, ParsePaxRecords(data));
        for (auto& r : recs) global_pax_.push_back(std::move(r));
        continue;
      }
      case 'L':
      case 'K': {
        const bool is_name = h.typeflag == 'L';
        if (h.size > kMaxLongNameSize) {
          RETURN_IF_ERROR(SkipData(RoundUpBlock(h.size)));
          if (skip_next_.empty()) {
            skip_next_ = std::string("its GNU long ") + (is_name ? "name" : "link") + " of " +
                         std::to_string(h.size) + " bytes is over 64 KiB";
          }
          continue;
        }
        ASSIGN_OR_RETURN(std::string data,
                         ReadBlockData(h.size, is_name ? "GNU long name" : "GNU long link"));
        data.resize(std::min(data.size(), data.find('\0')));
        if (is_name) {
          long_name_ = std::move(data);
          have_long_name_ = true;
        } else {
          long_link_ = std::move(data);
          have_long_link_ = true;
        }
        continue;
      }
      default:
        break;
    }

    Overrides o;
    uint64_t dropped = 0;  // xattrs over the limits
    RETURN_IF_ERROR(ApplyPax(local_pax_, &o, &dropped).Annotate("pax header" + at));

    std::string name = o.path ? *o.path : have_long_name_ ? long_name_ : h.name;
    std::string link = o.linkpath ? *o.linkpath : have_long_link_ ? long_link_ : h.linkname;
    const uint64_t size = o.size ? *o.size : h.size;
    const std::string skip_reason = std::move(skip_next_);
    ResetPending();
    pending_skip_ = IsHeaderOnly(h.typeflag, name) ? 0 : RoundUpBlock(size);

    if (h.typeflag == 'S' || o.sparse) {
      // Old GNU sparse headers may be followed by extension blocks before the data.
      bool extended = h.gnu_sparse_extended;
      while (extended) {
        ASSIGN_OR_RETURN(size_t n, stream_->Read(block));
        if (n != kTarBlockSize) return Status::Corrupt("tar: GNU sparse extension truncated");
        extended = block[504] != 0;
      }
      if (skip_reason.empty()) {
        ++stats_.skipped_sparse;
        Skipped("GNU sparse entry '" + Printable(name) +
                "': Unsupported: sparse files are not served");
        continue;
      }
    }
    if (!skip_reason.empty()) {
      Skipped("entry '" + Printable(name) + "'" + at + ": " + skip_reason);
      continue;
    }

    TarEntry e;
    bool known = true;
    switch (h.typeflag) {
      case '0':
      case '\0':
      case '7':
        e.type = (!name.empty() && name.back() == '/') ? EntryType::kDirectory
                                                       : EntryType::kRegular;
        break;
      case '1': e.type = EntryType::kHardLink; break;
      case '2': e.type = EntryType::kSymlink; break;
      case '3': e.type = EntryType::kCharDevice; break;
      case '4': e.type = EntryType::kBlockDevice; break;
      case '5': e.type = EntryType::kDirectory; break;
      case '6': e.type = EntryType::kFifo; break;
      default: known = false; break;
    }
    if (!known) {
      Skipped("entry '" + Printable(name) + "' of unknown type '" +
              Printable(std::string(1, h.typeflag)) + "'");
      continue;
    }
    std::optional<std::string> clean = CleanTarPath(name);
    if (const char* why = PathProblem(name, clean)) {
      Skipped("entry '" + Printable(name) + "': its path " + why);
      continue;
    }
    if (e.type == EntryType::kHardLink) {
      std::optional<std::string> target = CleanTarPath(link);
      const char* why = PathProblem(link, target);
      if (why == nullptr && target->empty()) why = "is the root";
      if (why != nullptr) {
        Skipped("hard link '" + Printable(name) + "': its target '" + Printable(link) + "' " +
                why);
        continue;
      }
      e.link_target = std::move(*target);
    } else if (e.type == EntryType::kSymlink) {
      // symlink(2) takes any bytes but NUL, up to PATH_MAX.
      if (link.find('\0') != std::string::npos || link.size() > kMaxPath) {
        Skipped("symlink '" + Printable(name) + "': its target has a NUL byte or is over 4096 bytes");
        continue;
      }
      e.link_target = std::move(link);
    }
    const uint64_t uid = o.uid ? *o.uid : h.uid;
    const uint64_t gid = o.gid ? *o.gid : h.gid;
    if (uid > std::numeric_limits<uint32_t>::max() || gid > std::numeric_limits<uint32_t>::max()) {
      Skipped("entry '" + Printable(name) + "': uid/gid beyond 32 bits");
      continue;
    }
    e.path = std::move(*clean);
    e.mode = h.mode & 07777;
    e.uid = static_cast<uint32_t>(uid);
    e.gid = static_cast<uint32_t>(gid);
    e.uname = o.uname ? *o.uname : h.uname;
    e.gname = o.gname ? *o.gname : h.gname;
    if (o.mtime) {
      e.mtime_sec = o.mtime->first;
      e.mtime_nsec = o.mtime->second;
    } else {
      e.mtime_sec = h.mtime;
    }
    if (e.type == EntryType::kRegular) {
      e.size = size;
      e.data_offset = header_offset + kTarBlockSize;
    }
    if (e.type == EntryType::kCharDevice || e.type == EntryType::kBlockDevice) {
      e.dev_major = h.dev_major;
      e.dev_minor = h.dev_minor;
    }
    dropped += BoundXattrs(&o.xattrs);
    if (dropped > 0) {
      stats_.dropped_xattrs += dropped;
      if (++warnings_ <= 100) {
        LOG_WARN("tar: entry '" + Printable(e.path) + "': " + std::to_string(dropped) +
                 " xattrs dropped (over 255-byte name, 64 KiB value, 128 or 64 KiB per entry)");
      }
    }
    e.xattrs = std::move(o.xattrs);
    *out = std::move(e);
    ++stats_.entries;
    return true;
  }
  return false;
}

}  // namespace regfs
