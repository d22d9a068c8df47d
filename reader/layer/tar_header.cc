#include "reader/layer/tar_header.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace regfs {
namespace {

// ustar field offsets and lengths (POSIX.1-1988 / GNU).
constexpr size_t kNameOff = 0, kNameLen = 100;
constexpr size_t kModeOff = 100, kModeLen = 8;
constexpr size_t kUidOff = 108, kUidLen = 8;
constexpr size_t kGidOff = 116, kGidLen = 8;
constexpr size_t kSizeOff = 124, kSizeLen = 12;
constexpr size_t kMtimeOff = 136, kMtimeLen = 12;
constexpr size_t kChksumOff = 148, kChksumLen = 8;
constexpr size_t kTypeOff = 156;
constexpr size_t kLinkOff = 157, kLinkLen = 100;
constexpr size_t kMagicOff = 257;
constexpr size_t kUnameOff = 265, kUnameLen = 32;
constexpr size_t kGnameOff = 297, kGnameLen = 32;
constexpr size_t kDevMajorOff = 329, kDevMajorLen = 8;
constexpr size_t kDevMinorOff = 337, kDevMinorLen = 8;
constexpr size_t kPrefixOff = 345, kPrefixLen = 155;
constexpr size_t kGnuIsExtendedOff = 482;

std::string FieldString(std::span<const uint8_t, kTarBlockSize> b, size_t off, size_t len) {
  const char* p = reinterpret_cast<const char*>(b.data() + off);
  return std::string(p, strnlen(p, len));
}

template <typename T>
Result<T> FieldNumber(std::span<const uint8_t, kTarBlockSize> b, size_t off, size_t len,
                      const char* what) {
  Result<int64_t> v = ParseTarNumber(b.subspan(off, len));
  if (!v.ok()) return v.status().Annotate(what);
  if (*v < 0 || static_cast<uint64_t>(*v) > std::numeric_limits<T>::max()) {
    return Status::Corrupt(std::string("tar header: ") + what + " out of range");
  }
  return static_cast<T>(*v);
}

bool IsOctal(uint8_t c) { return c >= '0' && c <= '7'; }

}  // namespace

const char* EntryTypeName(EntryType type) {
  switch (type) {
    case EntryType::kRegular: return "regular";
    case EntryType::kHardLink: return "hardlink";
    case EntryType::kSymlink: return "symlink";
    case EntryType::kCharDevice: return "char";
    case EntryType::kBlockDevice: return "block";
    case EntryType::kDirectory: return "dir";
    case EntryType::kFifo: return "fifo";
  }
  return "?";
}

bool IsZeroBlock(std::span<const uint8_t, kTarBlockSize> block) {
  return std::all_of(block.begin(), block.end(), [](uint8_t c) { return c == 0; });
}

Result<int64_t> ParseTarNumber(std::span<const uint8_t> field) {
  if (field.empty()) return int64_t{0};
  if (field[0] & 0x80) {
    // GNU base-256: two's complement big-endian; bit 6 of the first byte is the sign.
    const bool negative = (field[0] & 0x40) != 0;
    const uint64_t fill = negative ? 0xff : 0x00;
    uint64_t u = field[0] & 0x3f;
    if (negative) u |= ~uint64_t{0x3f};
    for (size_t i = 1; i < field.size(); ++i) {
      if ((u >> 56) != fill) return Status::Corrupt("tar header: base-256 number overflows");
      u = (u << 8) | field[i];
    }
    if ((u >> 63) != (negative ? 1u : 0u)) {
      return Status::Corrupt("tar header: base-256 number overflows");
    }
    return static_cast<int64_t>(u);
  }
  size_t i = 0;
  while (i < field.size() && (field[i] == ' ' || field[i] == 0)) {
    if (field[i] == 0) {
      // A field that starts with NUL is empty (some writers leave fields blank).
      bool rest_blank = std::all_of(field.begin() + i, field.end(),
                                    [](uint8_t c) { return c == 0 || c == ' '; });
      if (rest_blank) return int64_t{0};
      return Status::Corrupt("tar header: garbage in numeric field");
    }
    ++i;
  }
  uint64_t v = 0;
  for (; i < field.size() && IsOctal(field[i]); ++i) {
    if (v > (std::numeric_limits<uint64_t>::max() >> 3)) {
      return Status::Corrupt("tar header: octal number overflows");
    }
    v = (v << 3) | (field[i] - '0');
  }
  for (; i < field.size(); ++i) {
    if (field[i] != ' ' && field[i] != 0) {
      return Status::Corrupt("tar header: garbage in numeric field");
    }
  }
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Status::Corrupt("tar header: octal number overflows");
  }
  return static_cast<int64_t>(v);
}

Result<RawTarHeader> ParseTarHeader(std::span<const uint8_t, kTarBlockSize> b) {
  // Checksum: the field itself counts as eight spaces. Historic writers summed
  // signed chars, so either sum is accepted (as GNU tar and libarchive do).
  Result<int64_t> want = ParseTarNumber(b.subspan(kChksumOff, kChksumLen));
  if (!want.ok()) return want.status().Annotate("tar header checksum");
  int64_t sum_unsigned = 0, sum_signed = 0;
  for (size_t i = 0; i < kTarBlockSize; ++i) {
    const bool in_field = i >= kChksumOff && i < kChksumOff + kChksumLen;
    const uint8_t c = in_field ? ' ' : b[i];
    sum_unsigned += c;
    sum_signed += static_cast<int8_t>(c);
  }
  if (*want != sum_unsigned && *want != sum_signed) {
    return Status::Corrupt("tar header: checksum mismatch (stored " + std::to_string(*want) +
                           ", computed " + std::to_string(sum_unsigned) + ")");
  }

  RawTarHeader h;
  const char* magic = reinterpret_cast<const char*>(b.data() + kMagicOff);
  h.is_ustar = std::memcmp(magic, "ustar\0", 6) == 0;
  h.is_gnu = std::memcmp(magic, "ustar  \0", 8) == 0;
  h.typeflag = static_cast<char>(b[kTypeOff]);
  h.name = FieldString(b, kNameOff, kNameLen);
  h.linkname = FieldString(b, kLinkOff, kLinkLen);

  ASSIGN_OR_RETURN(h.mode, FieldNumber<uint32_t>(b, kModeOff, kModeLen, "mode"));
  ASSIGN_OR_RETURN(h.uid, FieldNumber<uint64_t>(b, kUidOff, kUidLen, "uid"));
  ASSIGN_OR_RETURN(h.gid, FieldNumber<uint64_t>(b, kGidOff, kGidLen, "gid"));
  ASSIGN_OR_RETURN(h.size, FieldNumber<uint64_t>(b, kSizeOff, kSizeLen, "size"));
  if (h.size > kMaxTarEntrySize) {
    return Status::Corrupt("tar header: absurd size " + std::to_string(h.size));
  }
  Result<int64_t> mtime = ParseTarNumber(b.subspan(kMtimeOff, kMtimeLen));
  if (!mtime.ok()) return mtime.status().Annotate("mtime");
  h.mtime = *mtime;

  if (h.is_ustar || h.is_gnu) {
    h.uname = FieldString(b, kUnameOff, kUnameLen);
    h.gname = FieldString(b, kGnameOff, kGnameLen);
    if (h.typeflag == '3' || h.typeflag == '4') {
      ASSIGN_OR_RETURN(h.dev_major,
                       FieldNumber<uint32_t>(b, kDevMajorOff, kDevMajorLen, "devmajor"));
      ASSIGN_OR_RETURN(h.dev_minor,
                       FieldNumber<uint32_t>(b, kDevMinorOff, kDevMinorLen, "devminor"));
    }
  }
  if (h.is_ustar) {
    std::string prefix = FieldString(b, kPrefixOff, kPrefixLen);
    if (!prefix.empty()) h.name = prefix + "/" + h.name;
  }
  if (h.is_gnu && h.typeflag == 'S') h.gnu_sparse_extended = b[kGnuIsExtendedOff] != 0;
  return h;
}

Result<PaxRecords> ParsePaxRecords(std::string_view data) {
  PaxRecords out;
  size_t pos = 0;
  while (pos < data.size()) {
    std::string_view rest = data.substr(pos);
    if (std::all_of(rest.begin(), rest.end(), [](char c) { return c == 0; })) break;
    size_t len = 0, i = 0;
    while (i < rest.size() && rest[i] >= '0' && rest[i] <= '9') {
      if (i >= 18) return Status::Corrupt("pax: record length too long");
      len = len * 10 + static_cast<size_t>(rest[i] - '0');
      ++i;
    }
    if (i == 0 || i >= rest.size() || rest[i] != ' ') {
      return Status::Corrupt("pax: malformed record length");
    }
    if (len <= i + 1 || len > rest.size()) return Status::Corrupt("pax: record length out of range");
    std::string_view rec = rest.substr(i + 1, len - i - 1);
    if (rec.empty() || rec.back() != '\n') return Status::Corrupt("pax: record not newline-terminated");
    rec.remove_suffix(1);
    size_t eq = rec.find('=');
    if (eq == std::string_view::npos || eq == 0) return Status::Corrupt("pax: record without key");
    out.emplace_back(std::string(rec.substr(0, eq)), std::string(rec.substr(eq + 1)));
    pos += len;
  }
  return out;
}

Result<std::pair<int64_t, uint32_t>> ParsePaxTime(std::string_view s) {
  bool negative = false;
  if (!s.empty() && s[0] == '-') {
    negative = true;
    s.remove_prefix(1);
  }
  size_t i = 0;
  int64_t sec = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
    if (i >= 18) return Status::Corrupt("pax: time out of range");
    sec = sec * 10 + (s[i] - '0');
  }
  if (i == 0) return Status::Corrupt("pax: malformed time");
  uint32_t nsec = 0;
  if (i < s.size()) {
    if (s[i] != '.') return Status::Corrupt("pax: malformed time");
    ++i;
    int digits = 0;
    for (; i < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') return Status::Corrupt("pax: malformed time fraction");
      if (digits < 9) {
        nsec = nsec * 10 + static_cast<uint32_t>(s[i] - '0');
        ++digits;
      }
    }
    for (; digits < 9; ++digits) nsec *= 10;
  }
  if (negative) {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1;
      nsec = 1000000000u - nsec;
    }
  }
  return std::make_pair(sec, nsec);
}

std::optional<std::string> CleanTarPath(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view comp = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (comp.empty() || comp == ".") continue;
    if (comp == "..") return std::nullopt;
    if (comp.find('\0') != std::string_view::npos) return std::nullopt;
    if (!out.empty()) out.push_back('/');
    out.append(comp);
  }
  return out;
}

}  // namespace regfs
