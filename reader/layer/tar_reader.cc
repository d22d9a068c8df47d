#include "reader/layer/tar_reader.h"

#include <array>
#include <limits>

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

void SetXattr(std::vector<std::pair<std::string, std::string>>* xattrs, std::string name,
              std::string value) {
  for (auto& [n, v] : *xattrs) {
    if (n == name) {
      v = std::move(value);
      return;
    }
  }
  xattrs->emplace_back(std::move(name), std::move(value));
}

Status ApplyPax(const PaxRecords& records, Overrides* o) {
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
      SetXattr(&o->xattrs, key.substr(kXattr.size()), value);
    } else if (key.compare(0, 11, "GNU.sparse.") == 0) {
      o->sparse = true;
    }
    // atime, ctime, comment, charset, LIBARCHIVE.* (bsdtar writes SCHILY.xattr
    // alongside its own xattr keys) and vendor keys are ignored.
  }
  return Status::Ok();
}

}  // namespace

void TarReader::ResetPending() {
  local_pax_.clear();
  long_name_.clear();
  long_link_.clear();
  have_long_name_ = have_long_link_ = false;
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

Result<std::string> TarReader::ReadBlockData(uint64_t size, uint64_t cap, const char* what) {
  if (size > cap) {
    return Status::Corrupt(std::string("tar: ") + what + " block of " + std::to_string(size) +
                           " bytes exceeds the cap of " + std::to_string(cap));
  }
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

    switch (h.typeflag) {
      case 'x':
      case 'X': {
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, kMaxPaxSize, "pax header"));
        ASSIGN_OR_RETURN(PaxRecords recs, ParsePaxRecords(data));
        for (auto& r : recs) local_pax_.push_back(std::move(r));
        continue;
      }
      case 'g': {
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, kMaxPaxSize, "pax global header"));
        ASSIGN_OR_RETURN(PaxRecords recs, ParsePaxRecords(data));
        for (auto& r : recs) global_pax_.push_back(std::move(r));
        continue;
      }
      case 'L': {
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, kMaxLongNameSize, "GNU long name"));
        long_name_ = data.substr(0, data.find('\0'));
        have_long_name_ = true;
        continue;
      }
      case 'K': {
        ASSIGN_OR_RETURN(std::string data, ReadBlockData(h.size, kMaxLongNameSize, "GNU long link"));
        long_link_ = data.substr(0, data.find('\0'));
        have_long_link_ = true;
        continue;
      }
      default:
        break;
    }

    Overrides o;
    RETURN_IF_ERROR(ApplyPax(global_pax_, &o).Annotate("pax global header"));
    // Global headers set defaults for every entry; path/linkpath there would
    // rename everything, which no extractor does usefully.
    o.path.reset();
    o.linkpath.reset();
    RETURN_IF_ERROR(ApplyPax(local_pax_, &o).Annotate("pax header at offset " +
                                                      std::to_string(header_offset)));

    std::string name = o.path ? *o.path : have_long_name_ ? long_name_ : h.name;
    std::string link = o.linkpath ? *o.linkpath : have_long_link_ ? long_link_ : h.linkname;
    const uint64_t size = o.size ? *o.size : h.size;
    ResetPending();

    if (h.typeflag == 'S' || o.sparse) {
      // Old GNU sparse headers may be followed by extension blocks before the data.
      bool extended = h.gnu_sparse_extended;
      while (extended) {
        ASSIGN_OR_RETURN(size_t n, stream_->Read(block));
        if (n != kTarBlockSize) return Status::Corrupt("tar: GNU sparse extension truncated");
        extended = block[504] != 0;
      }
      LOG_WARN("tar: skipping GNU sparse entry '" + Printable(name) +
               "': Unsupported: sparse files are not served");
      ++stats_.skipped;
      ++stats_.skipped_sparse;
      pending_skip_ = RoundUpBlock(size);
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
    pending_skip_ = RoundUpBlock(size);
    if (!known) {
      LOG_WARN("tar: skipping entry '" + Printable(name) + "' of unknown type '" +
               Printable(std::string(1, h.typeflag)) + "'");
      ++stats_.skipped;
      continue;
    }
    std::optional<std::string> clean = CleanTarPath(name);
    if (!clean) {
      LOG_WARN("tar: skipping entry '" + Printable(name) + "': path has a '..' component");
      ++stats_.skipped;
      continue;
    }
    if (e.type == EntryType::kHardLink) {
      std::optional<std::string> target = CleanTarPath(link);
      if (!target || target->empty()) {
        LOG_WARN("tar: skipping hard link '" + Printable(name) + "': bad target '" +
                 Printable(link) + "'");
        ++stats_.skipped;
        continue;
      }
      e.link_target = std::move(*target);
    } else if (e.type == EntryType::kSymlink) {
      e.link_target = std::move(link);
    }
    const uint64_t uid = o.uid ? *o.uid : h.uid;
    const uint64_t gid = o.gid ? *o.gid : h.gid;
    if (uid > std::numeric_limits<uint32_t>::max() || gid > std::numeric_limits<uint32_t>::max()) {
      LOG_WARN("tar: skipping entry '" + Printable(name) + "': uid/gid beyond 32 bits");
      ++stats_.skipped;
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
    e.xattrs = std::move(o.xattrs);
    *out = std::move(e);
    ++stats_.entries;
    return true;
  }
  return false;
}

}  // namespace regfs
