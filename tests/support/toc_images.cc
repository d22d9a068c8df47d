#include "tests/support/toc_images.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "reader/base/digest.h"
#include "tests/support/podman_env.h"
#include "tests/support/rich_entries.h"

extern char** environ;

namespace regfs::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using TE = TarEntry;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteAll(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return Status::IoError("cannot write " + path);
  return Status::Ok();
}

Status CommandStatus(const std::string& what, const CommandResult& r) {
  if (r.exit_code == 0) return Status::Ok();
  return Status::IoError(
      what + (r.timed_out ? " timed out" : " failed (exit " + std::to_string(r.exit_code) + ")") +
      ": " + r.output.substr(0, 4000));
}

uint64_t LittleEndian64(std::string_view b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[static_cast<size_t>(i)]);
  return v;
}

// "etc/x", "./etc/x", "/etc/x" -> "etc/x".
std::string CleanName(std::string name) {
  while (name.starts_with("./")) name.erase(0, 2);
  while (name.starts_with("/")) name.erase(0, 1);
  return name;
}

}  // namespace

std::string TocToolName(TocTool tool) {
  switch (tool) {
    case TocTool::kEstargz:
      return "estargz";
    case TocTool::kStargzZstdChunked:
      return "zstdchunked_stargz";
    case TocTool::kPodmanZstdChunked:
      return "zstdchunked_podman";
  }
  return "unknown";
}

std::string TocToolsMissing() {
  std::string missing;
  for (const char* tool : {"containerd", "ctr", "ctr-remote", "skopeo"}) {
    if (RunShell(std::string("command -v ") + tool).exit_code != 0) {
      missing += std::string(missing.empty() ? "" : ", ") + tool;
    }
  }
  if (!missing.empty())
    missing += " (packaging/install-deps.sh: stargz-snapshotter containerd skopeo)";
  return missing;
}

// ---- PrivateContainerd -----------------------------------------------------

PrivateContainerd::PrivateContainerd() = default;

PrivateContainerd::~PrivateContainerd() { Stop(); }

Status PrivateContainerd::Start() {
  if (running()) return Status::Ok();
  const std::string d = dir_.path();
  // Every path containerd would take from the host's defaults is moved
  // under `d`: no /var/lib/containerd, /run/containerd or /opt/containerd.
  // The plugins that would need the host (CRI, kernel-specific snapshotters)
  // are off; images are unpacked with the native snapshotter (copies, no
  // mounts left behind).
  std::string config =
      "version = 2\n"
      "root = \"" +
      d +
      "/root\"\n"
      "state = \"" +
      d +
      "/state\"\n"
      "disabled_plugins = [\"io.containerd.grpc.v1.cri\", "
      "\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", "
      "\"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n"
      "[grpc]\n  address = \"" +
      d +
      "/c.sock\"\n"
      "[ttrpc]\n  address = \"" +
      d +
      "/c.sock.ttrpc\"\n"
      "[debug]\n  address = \"\"\n"
      "[metrics]\n  address = \"\"\n"
      "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"" +
      d + "/opt\"\n";
  RETURN_IF_ERROR(WriteAll(d + "/config.toml", config));

  const std::string log = d + "/containerd.log";
  int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0) return Status::IoError("open " + log + ": " + std::strerror(errno));
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) {
    ::close(out);
    return Status::IoError("open /dev/null");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, devnull, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, out, 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  // setpriv --pdeathsig: a test killed by its timeout takes containerd
  // with it (setpriv execs containerd: same pid).
  std::vector<std::string> args;
  if (::access("/usr/bin/setpriv", X_OK) == 0) {
    args = {"/usr/bin/setpriv", "--pdeathsig", "KILL", "--"};
  }
  for (const std::string& a :
       {std::string("/usr/bin/containerd"), std::string("--config"), d + "/config.toml"}) {
    args.push_back(a);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out);
  ::close(devnull);
  if (rc != 0) return Status::IoError("spawn containerd: " + std::string(std::strerror(rc)));
  pid_ = pid;

  auto deadline = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < deadline) {
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return Status::IoError("containerd exited during start-up:\n" + LogTail());
    }
    if (::access(socket().c_str(), F_OK) == 0 && Ctr({"version"}, 10).exit_code == 0) {
      return Status::Ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Stop();
  return Status::Transient("containerd did not answer on " + socket() + " within 30 s:\n" +
                           LogTail());
}

void PrivateContainerd::Stop() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + std::chrono::seconds(10);
    int st = 0;
    while (true) {
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_ || (r < 0 && errno != EINTR)) break;
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
  }
  // Nothing should be mounted (native snapshotter), but a mount left under
  // the root would make the directory's removal fail or worse: detach any.
  std::istringstream mounts(ReadAll("/proc/self/mounts"));
  std::string line;
  std::vector<std::string> under;
  while (std::getline(mounts, line)) {
    std::istringstream f(line);
    std::string dev, where;
    f >> dev >> where;
    if (where.starts_with(dir_.path() + "/")) under.push_back(where);
  }
  std::sort(under.rbegin(), under.rend());  // deepest first
  for (const std::string& m : under) ::umount2(m.c_str(), MNT_DETACH);
}

CommandResult PrivateContainerd::Ctr(const std::vector<std::string>& args, int timeout_s) const {
  std::vector<std::string> argv = {"ctr", "-a", socket()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, timeout_s);
}

CommandResult PrivateContainerd::CtrRemote(const std::vector<std::string>& args,
                                           int timeout_s) const {
  std::vector<std::string> argv = {"ctr-remote", "-a", socket()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, timeout_s);
}

std::string PrivateContainerd::LogTail(size_t max_bytes) const {
  std::string s = ReadAll(dir_.Sub("containerd.log"));
  if (s.size() > max_bytes) s = s.substr(s.size() - max_bytes);
  return s;
}

// ---- images ----------------------------------------------------------------

uint64_t TocImage::BlobBytes() const {
  uint64_t n = 0;
  for (const TocLayer& l : layers) n += l.size;
  return n;
}

Result<TocImage> FetchTocImage(const TestRegistry& registry, const std::string& repo,
                               const std::string& tag, TocTool tool) {
  ImagePusher http(registry);
  ASSIGN_OR_RETURN(HttpResult m, http.Get("/v2/" + repo + "/manifests/" + tag,
                                          "application/vnd.oci.image.manifest.v1+json, "
                                          "application/vnd.docker.distribution.manifest.v2+json"));
  if (m.status != 200) {
    return Status::NotFound("manifest " + repo + ":" + tag + ": HTTP " + std::to_string(m.status) +
                            " " + m.body);
  }
  TocImage image;
  image.tool = tool;
  image.repo = repo;
  image.tag = tag;
  image.manifest = m.body;
  json j = json::parse(m.body, nullptr, false);
  if (!j.is_object() || !j.contains("layers") || !j.contains("config")) {
    return Status::Corrupt("manifest " + repo + ":" + tag + " is not an image manifest: " + m.body);
  }
  auto get_blob = [&](const std::string& digest) -> Result<std::string> {
    ASSIGN_OR_RETURN(HttpResult b,
                     http.Get("/v2/" + repo + "/blobs/" + digest, "", false, size_t{1} << 31));
    if (b.status != 200) {
      return Status::NotFound("blob " + digest + ": HTTP " + std::to_string(b.status));
    }
    return std::move(b.body);
  };
  ASSIGN_OR_RETURN(image.config, get_blob(j["config"]["digest"].get<std::string>()));
  for (const json& l : j["layers"]) {
    TocLayer layer;
    layer.media_type = l.value("mediaType", "");
    layer.digest = l.value("digest", "");
    layer.size = l.value("size", uint64_t{0});
    if (l.contains("annotations")) {
      for (const auto& [k, v] : l["annotations"].items()) {
        if (v.is_string()) layer.annotations[k] = v.get<std::string>();
      }
    }
    ASSIGN_OR_RETURN(layer.blob, get_blob(layer.digest));
    if (layer.blob.size() != layer.size || Sha256Digest(layer.blob) != layer.digest) {
      return Status::Corrupt("blob " + layer.digest + " does not match its descriptor");
    }
    image.layers.push_back(std::move(layer));
  }
  return image;
}

namespace {

Result<TocImage> ConvertWithCtrRemote(TocTool tool, const TestRegistry& registry,
                                      PrivateContainerd& ctd, const std::string& src,
                                      const std::string& dst_repo, const std::string& dst_tag) {
  if (!ctd.running()) return Status::InvalidArgument("containerd is not running");
  const std::string dst = registry.Ref(dst_repo, dst_tag);
  RETURN_IF_ERROR(
      CommandStatus("ctr images pull " + src,
                    ctd.Ctr({"images", "pull", "--plain-http", "--snapshotter", "native", src})));
  std::vector<std::string> convert = {"image", "convert"};
  convert.push_back(tool == TocTool::kEstargz ? "--estargz" : "--zstdchunked");
  convert.insert(convert.end(), {"--oci", src, dst});
  RETURN_IF_ERROR(CommandStatus("ctr-remote image convert " + src, ctd.CtrRemote(convert)));
  RETURN_IF_ERROR(
      CommandStatus("ctr images push " + dst, ctd.Ctr({"images", "push", "--plain-http", dst})));
  return FetchTocImage(registry, dst_repo, dst_tag, tool);
}

// containers/storage 1.43's writer through skopeo, into a dir: copy; then
// pushed blob by blob so that nothing reuses the gzip blob of the source.
Result<TocImage> ConvertWithSkopeo(const TestRegistry& registry, const std::string& work_dir,
                                   const std::string& src, const std::string& dst_repo,
                                   const std::string& dst_tag) {
  const std::string dir = work_dir + "/skopeo-zstdchunked-" + dst_tag;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  // skopeo 1.9.3 waits forever on a layer whose tar has no end-of-archive
  // blocks (containers/storage 1.43's compressor); the timeout bounds it.
  RETURN_IF_ERROR(CommandStatus(
      "skopeo copy --dest-compress-format zstd:chunked " + src,
      RunCommand({"skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-compress",
                  "--dest-compress-format", "zstd:chunked", "docker://" + src, "dir:" + dir},
                 300)));
  std::string manifest = ReadAll(dir + "/manifest.json");
  json j = json::parse(manifest, nullptr, false);
  if (!j.is_object() || !j.contains("layers")) {
    return Status::Corrupt("skopeo's dir: manifest: " + manifest);
  }
  ImagePusher pusher(registry);
  auto push = [&](const std::string& digest) -> Status {
    std::string data = ReadAll(dir + "/" + digest.substr(digest.find(':') + 1));
    if (Sha256Digest(data) != digest) return Status::Corrupt("dir: blob " + digest);
    return pusher.PushBlob(dst_repo, data);
  };
  RETURN_IF_ERROR(push(j["config"]["digest"].get<std::string>()));
  for (const json& l : j["layers"]) RETURN_IF_ERROR(push(l["digest"].get<std::string>()));
  RETURN_IF_ERROR(pusher.PushManifest(
      dst_repo, dst_tag, manifest,
      j.value("mediaType", std::string("application/vnd.oci.image.manifest.v1+json"))));
  return FetchTocImage(registry, dst_repo, dst_tag, TocTool::kPodmanZstdChunked);
}

}  // namespace

Result<TocImage> ConvertImage(TocTool tool, const TestRegistry& registry,
                              PrivateContainerd* containerd, const std::string& work_dir,
                              const std::string& src_repo, const std::string& src_tag,
                              const std::string& dst_repo, const std::string& dst_tag) {
  const std::string src = registry.Ref(src_repo, src_tag);
  if (tool == TocTool::kPodmanZstdChunked) {
    return ConvertWithSkopeo(registry, work_dir, src, dst_repo, dst_tag);
  }
  if (!containerd) return Status::InvalidArgument("ctr-remote needs a containerd");
  return ConvertWithCtrRemote(tool, registry, *containerd, src, dst_repo, dst_tag);
}

// ---- footers and TOCs ------------------------------------------------------

Result<TocFooter> ParseTocFooter(std::string_view blob) {
  TocFooter f;
  // zstd:chunked: the last frame is skippable (magic 0x184D2A50, little
  // endian, then its length) and holds offset, length, uncompressed length,
  // type, [tar-split offset, length, uncompressed length,] magic.
  auto skippable = [&](size_t payload) {
    if (blob.size() < payload + 8) return false;
    std::string_view h = blob.substr(blob.size() - payload - 8, 8);
    return h.substr(0, 4) == std::string_view("\x50\x2a\x4d\x18", 4) &&
           LittleEndian64(std::string(h.substr(4, 4)) + std::string(4, '\0')) == payload;
  };
  if (blob.size() >= 8 && blob.substr(blob.size() - 8) == "GnUlInUx" && skippable(40)) {
    std::string_view p = blob.substr(blob.size() - 40);
    f.kind = "zstd:chunked";
    f.size = 48;
    f.toc_offset = LittleEndian64(p.substr(0, 8));
    f.toc_length = LittleEndian64(p.substr(8, 8));
    f.toc_uncompressed_length = LittleEndian64(p.substr(16, 8));
    return f;
  }
  if (blob.size() >= 8 && blob.substr(blob.size() - 8) == "GNUlInUx" && skippable(64)) {
    std::string_view p = blob.substr(blob.size() - 64);
    f.kind = "zstd:chunked-v2";
    f.size = 72;
    f.toc_offset = LittleEndian64(p.substr(0, 8));
    f.toc_length = LittleEndian64(p.substr(8, 8));
    f.toc_uncompressed_length = LittleEndian64(p.substr(16, 8));
    return f;
  }
  // eStargz: an empty gzip member whose extra field is "SG" + 22 + "%016xSTARGZ";
  // legacy stargz: the extra field is "%016xSTARGZ" itself (47 bytes).
  for (size_t size : {size_t{51}, size_t{47}}) {
    if (blob.size() < size) continue;
    std::string_view g = blob.substr(blob.size() - size);
    if (g[0] != '\x1f' || g[1] != '\x8b' || g[2] != '\x08' || (g[3] & 4) == 0) continue;
    size_t xlen = static_cast<uint8_t>(g[10]) | (static_cast<uint8_t>(g[11]) << 8);
    std::string_view extra = g.substr(12, std::min(xlen, g.size() - 12));
    if (size == 51) {
      if (xlen != 26 || extra.substr(0, 4) != std::string_view("SG\x16\x00", 4)) continue;
      extra.remove_prefix(4);
    } else if (xlen != 22) {
      continue;
    }
    if (extra.size() != 22 || extra.substr(16) != "STARGZ") continue;
    f.kind = size == 51 ? "estargz" : "stargz";
    f.size = size;
    f.toc_offset = std::stoull(std::string(extra.substr(0, 16)), nullptr, 16);
    return f;
  }
  return Status::NotFound("no eStargz, stargz or zstd:chunked footer");
}

Result<std::string> ExtractTocJson(const TocLayer& layer) {
  ASSIGN_OR_RETURN(TocFooter f, ParseTocFooter(layer.blob));
  if (f.toc_offset >= layer.blob.size()) return Status::Corrupt("TOC offset past the blob");
  if (f.kind.starts_with("zstd")) {
    if (f.toc_offset + f.toc_length > layer.blob.size()) {
      return Status::Corrupt("TOC range past the blob");
    }
    std::string toc =
        UnzstdForTest(std::string_view(layer.blob).substr(f.toc_offset, f.toc_length));
    if (toc.empty()) return Status::Corrupt("TOC frame does not decompress");
    return toc;
  }
  // The TOC gzip member: a tar header of stargz.index.json and the JSON.
  std::string tar = GunzipForTest(
      std::string_view(layer.blob).substr(f.toc_offset, layer.blob.size() - f.size - f.toc_offset));
  if (tar.size() < 512 ||
      std::string_view(tar.data()).find("stargz.index.json") == std::string::npos) {
    return Status::Corrupt("no stargz.index.json entry at the TOC offset");
  }
  uint64_t size = std::stoull(std::string(tar.substr(124, 12)), nullptr, 8);
  if (512 + size > tar.size()) return Status::Corrupt("stargz.index.json entry truncated");
  return tar.substr(512, size);
}

Result<BlobRange> FirstChunkRange(const TocLayer& layer, std::string_view path) {
  ASSIGN_OR_RETURN(TocFooter f, ParseTocFooter(layer.blob));
  ASSIGN_OR_RETURN(std::string toc, ExtractTocJson(layer));
  json j = json::parse(toc, nullptr, false);
  if (!j.is_object() || !j.contains("entries")) return Status::Corrupt("TOC is not JSON");
  int64_t start = -1;
  std::vector<uint64_t> offsets;
  for (const json& e : j["entries"]) {
    uint64_t off = e.value("offset", uint64_t{0});
    if (off > 0) offsets.push_back(off);
    if (start < 0 && CleanName(e.value("name", "")) == path && e.value("type", "") == "reg" &&
        e.value("size", uint64_t{0}) > 0) {
      start = static_cast<int64_t>(off);
    }
  }
  if (start <= 0) return Status::NotFound("no regular file " + std::string(path) + " in the TOC");
  uint64_t end = f.toc_offset;
  for (uint64_t o : offsets) {
    if (o > static_cast<uint64_t>(start)) end = std::min(end, o);
  }
  return BlobRange{static_cast<uint64_t>(start), end - static_cast<uint64_t>(start)};
}

uint64_t BlobBytesServed(const TestRegistry& registry, std::string_view digest) {
  // Combined log: ... "GET /v2/r/blobs/sha256:.. HTTP/1.1" 206 1234 "" "ua";
  // lines can lag the answers by a few ms: read until two reads agree.
  auto sum = [&] {
    uint64_t total = 0;
    std::istringstream in(ReadAll(registry.access_log_path()));
    std::string line;
    while (std::getline(in, line)) {
      size_t q1 = line.find('"');
      size_t q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
      if (q2 == std::string::npos) continue;
      std::istringstream req(line.substr(q1 + 1, q2 - q1 - 1));
      std::string method, path;
      req >> method >> path;
      if (method != "GET" || path.find("/blobs/") == std::string::npos) continue;
      if (!digest.empty() && path.find(digest) == std::string::npos) continue;
      std::istringstream rest(line.substr(q2 + 1));
      int status = 0;
      uint64_t bytes = 0;
      if (rest >> status >> bytes) total += bytes;
    }
    return total;
  };
  uint64_t last = sum();
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    uint64_t now = sum();
    if (now == last) break;
    last = now;
  }
  return last;
}

Status FlipStoredBlobBytes(const TestRegistry& registry, std::string_view digest, uint64_t offset,
                           uint64_t length) {
  std::string hex(digest.substr(digest.find(':') + 1));
  std::string path = registry.storage_dir() + "/docker/registry/v2/blobs/sha256/" +
                     hex.substr(0, 2) + "/" + hex + "/data";
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  if (!f) return Status::NotFound("no stored blob at " + path);
  std::string buf(length, '\0');
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(buf.data(), static_cast<std::streamsize>(length));
  if (static_cast<uint64_t>(f.gcount()) != length) return Status::IoError("short read of " + path);
  for (char& c : buf) c = static_cast<char>(c ^ 0xff);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(buf.data(), static_cast<std::streamsize>(length));
  f.close();
  if (!f) return Status::IoError("cannot write " + path);
  return Status::Ok();
}

ImageSpec TocBaseImageSpec(uint64_t bulk_mib) {
  std::vector<TE> base = HostCatEntries();  // bin, lib, lib64, etc
  for (TE& e : RichEntries("toc")) {
    if (e.type == TarType::kDir && e.path == "etc") continue;  // HostCatEntries has it
    base.push_back(std::move(e));
  }
  std::vector<TE> top = {TE::Dir("etc"), TE::Dir("tmp", 01777)};
  top.push_back(TE::Whiteout("etc/empty"));
  top.push_back(TE::OpaqueWhiteout("tmp"));
  top.push_back(TE::File("tmp/new", "after the opaque marker\n"));
  top.push_back(TE::File("etc/message", "from the top layer\n"));
  top.back().xattrs["user.toc"] = "top";
  ImageSpec spec;
  spec.layers.push_back({base, Compression::kGzip});
  spec.layers.push_back({DeterministicDataEntries(100, bulk_mib << 20), Compression::kGzip});
  spec.layers.push_back({top, Compression::kGzip});
  spec.cmd = {"/bin/cat", "/etc/os-release"};
  return spec;
}

std::string TocBaseOsRelease() { return "NAME=\"regfs toc\"\nID=regfs\n"; }

Status DumpTocImage(const TocImage& image, const std::string& dir) {
  const std::string d = dir + "/" + TocToolName(image.tool);
  std::error_code ec;
  std::filesystem::create_directories(d, ec);
  if (ec) return Status::IoError("mkdir " + d + ": " + ec.message());
  RETURN_IF_ERROR(WriteAll(d + "/manifest.json", image.manifest));
  RETURN_IF_ERROR(WriteAll(d + "/config.json", image.config));
  for (size_t i = 0; i < image.layers.size(); ++i) {
    const std::string n = d + "/layer-" + std::to_string(i);
    RETURN_IF_ERROR(WriteAll(n + ".blob", image.layers[i].blob));
    Result<std::string> toc = ExtractTocJson(image.layers[i]);
    if (toc.ok()) RETURN_IF_ERROR(WriteAll(n + ".toc.json", *toc));
  }
  return Status::Ok();
}

}  // namespace regfs::testing
