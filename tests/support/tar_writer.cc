#include "tests/support/tar_writer.h"

#include <cstring>

namespace regfs::testing {
namespace {

constexpr size_t kBlock = 512;

struct Header {
  char b[kBlock];
  Header() { std::memset(b, 0, sizeof b); }
};

void PutString(char* field, size_t width, std::string_view s) {
  std::memcpy(field, s.data(), std::min(width, s.size()));
}

bool FitsOctal(uint64_t v, size_t width) {
  // width-1 octal digits plus a NUL.
  const unsigned digits = static_cast<unsigned>(width - 1);
  return digits >= 22 || v < (uint64_t{1} << (3 * digits));
}

// Octal with a trailing NUL, or base-256 (high bit set, big-endian) when the
// value does not fit, as GNU tar and Go do.
void PutNumber(char* field, size_t width, uint64_t v) {
  if (FitsOctal(v, width)) {
    std::string s(width - 1, '0');
    for (size_t i = width - 1; i-- > 0;) {
      s[i] = static_cast<char>('0' + (v & 7));
      v >>= 3;
    }
    std::memcpy(field, s.data(), width - 1);
    field[width - 1] = '\0';
    return;
  }
  std::memset(field, 0, width);
  for (size_t i = width; i-- > 1 && v;) {
    field[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  field[0] = static_cast<char>(0x80);
}

void Checksum(Header& h) {
  std::memset(h.b + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h.b) sum += c;
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06o", sum);
  std::memcpy(h.b + 148, buf, 6);
  h.b[154] = '\0';
  h.b[155] = ' ';
}

void AppendData(std::string* out, std::string_view data) {
  out->append(data);
  size_t pad = (kBlock - data.size() % kBlock) % kBlock;
  out->append(pad, '\0');
}

// Fills the fields common to every header. `gnu` selects the GNU magic.
Header MakeHeader(std::string_view name, char typeflag, uint64_t size, const TarEntry& e,
                  bool gnu) {
  Header h;
  PutString(h.b, 100, name);
  PutNumber(h.b + 100, 8, e.mode & 07777);
  PutNumber(h.b + 108, 8, e.uid);
  PutNumber(h.b + 116, 8, e.gid);
  PutNumber(h.b + 124, 12, size);
  PutNumber(h.b + 136, 12, e.mtime < 0 ? 0 : static_cast<uint64_t>(e.mtime));
  h.b[156] = typeflag;
  if (gnu) {
    std::memcpy(h.b + 257, "ustar  ", 8);  // "ustar" SP SP NUL
  } else {
    std::memcpy(h.b + 257, "ustar", 6);  // with NUL
    std::memcpy(h.b + 263, "00", 2);
  }
  PutString(h.b + 265, 32, e.uname);
  PutString(h.b + 297, 32, e.gname);
  return h;
}

std::string PaxRecord(std::string_view key, std::string_view value) {
  // "%d %s=%s\n" where %d counts the whole record including itself.
  size_t body = 1 + key.size() + 1 + value.size() + 1;
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) ++len;
  return std::to_string(len) + " " + std::string(key) + "=" + std::string(value) + "\n";
}

char TypeFlag(TarType t) {
  switch (t) {
    case TarType::kFile:
      return '0';
    case TarType::kHardlink:
      return '1';
    case TarType::kSymlink:
      return '2';
    case TarType::kCharDev:
      return '3';
    case TarType::kBlockDev:
      return '4';
    case TarType::kDir:
      return '5';
    case TarType::kFifo:
      return '6';
  }
  return '0';
}

// Splits `path` into ustar prefix/name, or returns false.
bool SplitUstar(std::string_view path, std::string* prefix, std::string* name) {
  if (path.size() <= 100) {
    prefix->clear();
    *name = std::string(path);
    return true;
  }
  for (size_t i = path.size(); i-- > 0;) {
    if (path[i] != '/') continue;
    if (i <= 155 && path.size() - i - 1 <= 100 && path.size() - i - 1 > 0) {
      *prefix = std::string(path.substr(0, i));
      *name = std::string(path.substr(i + 1));
      return true;
    }
  }
  return false;
}

}  // namespace

TarEntry TarEntry::File(std::string path, std::string content, uint32_t mode) {
  TarEntry e;
  e.type = TarType::kFile;
  e.path = std::move(path);
  e.content = std::move(content);
  e.mode = mode;
  return e;
}
TarEntry TarEntry::Dir(std::string path, uint32_t mode) {
  TarEntry e;
  e.type = TarType::kDir;
  e.path = std::move(path);
  e.mode = mode;
  return e;
}
TarEntry TarEntry::Symlink(std::string path, std::string target) {
  TarEntry e;
  e.type = TarType::kSymlink;
  e.path = std::move(path);
  e.link_target = std::move(target);
  e.mode = 0777;
  return e;
}
TarEntry TarEntry::Hardlink(std::string path, std::string target) {
  TarEntry e;
  e.type = TarType::kHardlink;
  e.path = std::move(path);
  e.link_target = std::move(target);
  return e;
}
TarEntry TarEntry::CharDev(std::string path, uint32_t major, uint32_t minor, uint32_t mode) {
  TarEntry e;
  e.type = TarType::kCharDev;
  e.path = std::move(path);
  e.dev_major = major;
  e.dev_minor = minor;
  e.mode = mode;
  return e;
}
TarEntry TarEntry::BlockDev(std::string path, uint32_t major, uint32_t minor, uint32_t mode) {
  TarEntry e = CharDev(std::move(path), major, minor, mode);
  e.type = TarType::kBlockDev;
  return e;
}
TarEntry TarEntry::Fifo(std::string path, uint32_t mode) {
  TarEntry e;
  e.type = TarType::kFifo;
  e.path = std::move(path);
  e.mode = mode;
  return e;
}
TarEntry TarEntry::Whiteout(std::string_view path) {
  size_t slash = path.rfind('/');
  std::string wh =
      slash == std::string_view::npos
          ? ".wh." + std::string(path)
          : std::string(path.substr(0, slash + 1)) + ".wh." + std::string(path.substr(slash + 1));
  return File(std::move(wh), "", 0644);
}
TarEntry TarEntry::OpaqueWhiteout(std::string_view dir) {
  std::string d(dir);
  while (!d.empty() && d.back() == '/') d.pop_back();
  return File(d.empty() ? ".wh..wh..opq" : d + "/.wh..wh..opq", "", 0644);
}

void AppendTarEntry(std::string* out, const TarEntry& e) {
  std::string path = e.path;
  if (e.type == TarType::kDir && !path.empty() && path.back() != '/') path += '/';
  const bool has_link = e.type == TarType::kSymlink || e.type == TarType::kHardlink;
  const uint64_t size = e.type == TarType::kFile ? e.content.size() : 0;
  const bool gnu = e.long_names == LongNameStyle::kGnu;

  std::string pax;
  std::string name_field = path, prefix_field;
  std::string link_field = has_link ? e.link_target : "";

  if (path.size() > 100) {
    if (e.long_names == LongNameStyle::kGnu) {
      std::string data = path + '\0';
      Header l = MakeHeader("././@LongLink", 'L', data.size(), TarEntry{}, true);
      Checksum(l);
      out->append(l.b, kBlock);
      AppendData(out, data);
      name_field = path.substr(0, 100);
    } else if (e.long_names == LongNameStyle::kUstarPrefix &&
               SplitUstar(path, &prefix_field, &name_field)) {
      // fits the ustar split
    } else {
      pax += PaxRecord("path", path);
      name_field = path.substr(0, 100);
      prefix_field.clear();
    }
  }
  if (link_field.size() > 100) {
    if (gnu) {
      std::string data = link_field + '\0';
      Header k = MakeHeader("././@LongLink", 'K', data.size(), TarEntry{}, true);
      Checksum(k);
      out->append(k.b, kBlock);
      AppendData(out, data);
    } else {
      pax += PaxRecord("linkpath", link_field);
    }
    link_field = link_field.substr(0, 100);
  }
  if (e.mtime_nsec != 0 || e.mtime < 0) {
    char frac[16];
    std::snprintf(frac, sizeof frac, "%09u", e.mtime_nsec);
    pax += PaxRecord("mtime", std::to_string(e.mtime) + "." + frac);
  }
  if (!FitsOctal(e.uid, 8)) pax += PaxRecord("uid", std::to_string(e.uid));
  if (!FitsOctal(e.gid, 8)) pax += PaxRecord("gid", std::to_string(e.gid));
  if (e.uname.size() > 32) pax += PaxRecord("uname", e.uname);
  if (e.gname.size() > 32) pax += PaxRecord("gname", e.gname);
  for (const auto& [k, v] : e.xattrs) pax += PaxRecord("SCHILY.xattr." + k, v);
  if (pax.empty() && e.force_pax) pax += PaxRecord("comment", "regfs test");

  if (!pax.empty()) {
    size_t slash = path.find_last_of('/', path.size() >= 2 ? path.size() - 2 : 0);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string pax_name = "PaxHeaders.0/" + base;
    Header x = MakeHeader(pax_name.substr(0, 100), 'x', pax.size(), e, false);
    Checksum(x);
    out->append(x.b, kBlock);
    AppendData(out, pax);
  }

  Header h = MakeHeader(name_field, TypeFlag(e.type), size, e, gnu);
  PutString(h.b + 157, 100, link_field);
  if (e.type == TarType::kCharDev || e.type == TarType::kBlockDev) {
    PutNumber(h.b + 329, 8, e.dev_major);
    PutNumber(h.b + 337, 8, e.dev_minor);
  }
  if (!gnu) PutString(h.b + 345, 155, prefix_field);
  Checksum(h);
  out->append(h.b, kBlock);
  if (e.type == TarType::kFile) AppendData(out, e.content);
}

void FinishTar(std::string* out) { out->append(2 * kBlock, '\0'); }

std::string BuildTar(const std::vector<TarEntry>& entries) {
  std::string out;
  for (const TarEntry& e : entries) AppendTarEntry(&out, e);
  FinishTar(&out);
  return out;
}

}  // namespace regfs::testing
