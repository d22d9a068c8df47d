#include "reader/layer/index_builder.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "reader/base/digest.h"
#include "reader/base/log.h"
#include "reader/layer/codec.h"
#include "reader/layer/tar_reader.h"

namespace regfs {
namespace {

// Output bytes between two calls of IndexBuildOptions::cancelled: 1 MiB is
// at most 2048 tar headers, well under a millisecond of work.
constexpr uint64_t kCancelCheckInterval = 1 << 20;

Status CancelledStatus() { return Status::Transient("layer index build cancelled"); }

uint64_t SaturatingMul(uint64_t a, uint64_t b) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) {
    return std::numeric_limits<uint64_t>::max();
  }
  return a * b;
}

// Reads the blob front to back in pieces, hashing every byte.
class BlobPass {
 public:
  BlobPass(BlobSource* source, const BlobDescriptor& blob, const IndexBuildOptions& options)
      : source_(source), blob_(blob), options_(options) {
    buf_.resize(std::max<size_t>(options.read_size, 4096));
  }

  // The next piece; empty at the end of the blob. Valid until the next call.
  Result<std::span<const uint8_t>> Next() {
    if (offset_ >= blob_.size) return std::span<const uint8_t>();
    if (options_.cancelled && options_.cancelled()) return CancelledStatus();
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf_.size(), blob_.size - offset_));
    std::span<uint8_t> piece(buf_.data(), n);
    Status st = source_->ReadAt(blob_, offset_, piece);
    if (!st.ok()) return st.Annotate("reading " + blob_.digest);
    sha_.Update(piece.data(), piece.size());
    offset_ += n;
    if (options_.progress) options_.progress(offset_, blob_.size);
    return std::span<const uint8_t>(piece);
  }
  uint64_t offset() const { return offset_; }

  // Reads what is left and compares the digest.
  Status Finish() {
    while (offset_ < blob_.size) {
      ASSIGN_OR_RETURN(std::span<const uint8_t> p, Next());
      (void)p;
    }
    std::string got = sha_.FinishDigest();
    if (got != blob_.digest) {
      return Status::Corrupt("blob digest mismatch: expected " + blob_.digest + ", got " + got);
    }
    return Status::Ok();
  }

 private:
  BlobSource* source_;
  const BlobDescriptor& blob_;
  const IndexBuildOptions& options_;
  std::vector<uint8_t> buf_;
  uint64_t offset_ = 0;
  Sha256 sha_;
};

// Common output-buffer handling: decoders fill [end_, size) of buf_, the tar
// reader consumes [start_, end_). The last 32 KiB stay in front on a slide so
// a gzip checkpoint can copy its window.
class BufferedStream : public TarStream {
 public:
  Result<size_t> Read(std::span<uint8_t> out) override {
    size_t done = 0;
    while (done < out.size()) {
      if (start_ == end_) {
        if (eof_) break;
        RETURN_IF_ERROR(Refill());
        continue;
      }
      size_t n = std::min(out.size() - done, end_ - start_);
      std::memcpy(out.data() + done, buf_.data() + start_, n);
      start_ += n;
      done += n;
    }
    position_ += done;
    return done;
  }
  Result<uint64_t> Skip(uint64_t n) override {
    uint64_t done = 0;
    while (done < n) {
      if (start_ == end_) {
        if (eof_) break;
        RETURN_IF_ERROR(Refill());
        continue;
      }
      size_t k = static_cast<size_t>(std::min<uint64_t>(n - done, end_ - start_));
      start_ += k;
      done += k;
    }
    position_ += done;
    return done;
  }
  uint64_t Position() const override { return position_; }
  uint64_t produced() const { return produced_; }

  // Hash every byte produced into *hash (the DiffID of a compressed layer).
  void HashOutputInto(Sha256* hash) { hash_ = hash; }
  // Fail once more than `max_bytes` are produced (a decompression bomb);
  // `why` says which limit that is.
  void LimitOutput(uint64_t max_bytes, std::string why) {
    max_output_ = max_bytes;
    limit_why_ = std::move(why);
  }
  // Consulted every kCancelCheckInterval bytes of output. May be null.
  void CancelWith(const std::function<bool()>* cancelled) { cancelled_ = cancelled; }

 protected:
  static constexpr size_t kOutSize = 256 << 10;
  BufferedStream() : buf_(kGzipWindowSize + kOutSize) {}

  // Produces more output (or sets eof_).
  virtual Status Fill() = 0;

  Status Refill() {
    if (end_ == buf_.size()) {
      std::memmove(buf_.data(), buf_.data() + end_ - kGzipWindowSize, kGzipWindowSize);
      start_ = end_ = kGzipWindowSize;
    }
    RETURN_IF_ERROR(Fill());
    if (produced_ > max_output_) {
      return Status::Corrupt("layer decompresses to more than " + std::to_string(max_output_) +
                             " uncompressed bytes (" + limit_why_ + ")");
    }
    // Checked here, inside a piece of the blob, not only between reads: a
    // few KiB of zstd can hold gigabytes of output.
    if (cancelled_ != nullptr && *cancelled_ && produced_ >= next_cancel_check_) {
      next_cancel_check_ = produced_ + kCancelCheckInterval;
      if ((*cancelled_)()) return CancelledStatus();
    }
    return Status::Ok();
  }
  uint8_t* out_ptr() { return buf_.data() + end_; }
  size_t out_avail() const { return buf_.size() - end_; }
  void Produced(size_t n) {
    if (hash_ != nullptr && n > 0) hash_->Update(buf_.data() + end_, n);
    end_ += n;
    produced_ += n;
  }
  // The last (up to) 32 KiB of output.
  std::span<const uint8_t> Window() const {
    size_t w = std::min<size_t>(kGzipWindowSize, end_);
    return std::span<const uint8_t>(buf_.data() + end_ - w, w);
  }

  bool eof_ = false;

 private:
  std::vector<uint8_t> buf_;
  size_t start_ = 0, end_ = 0;
  uint64_t position_ = 0;
  uint64_t produced_ = 0;
  Sha256* hash_ = nullptr;
  uint64_t max_output_ = std::numeric_limits<uint64_t>::max();
  std::string limit_why_;
  const std::function<bool()>* cancelled_ = nullptr;
  uint64_t next_cancel_check_ = kCancelCheckInterval;
};

class PlainStream : public BufferedStream {
 public:
  explicit PlainStream(BlobPass* pass) : pass_(pass) {}

 private:
  Status Fill() override {
    if (piece_.empty()) {
      ASSIGN_OR_RETURN(piece_, pass_->Next());
      if (piece_.empty()) {
        eof_ = true;
        return Status::Ok();
      }
    }
    size_t n = std::min(piece_.size(), out_avail());
    std::memcpy(out_ptr(), piece_.data(), n);
    piece_ = piece_.subspan(n);
    Produced(n);
    return Status::Ok();
  }

  BlobPass* pass_;
  std::span<const uint8_t> piece_;
};

class GzipStream : public BufferedStream {
 public:
  GzipStream(BlobPass* pass, std::unique_ptr<ZInflate> z, uint64_t interval)
      : pass_(pass), z_(std::move(z)), interval_(interval) {}
  std::vector<GzipCheckpoint> TakeCheckpoints() { return std::move(checkpoints_); }
  uint64_t members() const { return members_; }

 private:
  Status Fill() override {
    z_stream* s = z_->get();
    for (;;) {
      if (s->avail_in == 0 && !blob_done_) {
        ASSIGN_OR_RETURN(std::span<const uint8_t> p, pass_->Next());
        if (p.empty()) {
          blob_done_ = true;
        } else {
          piece_ = p.data();
          piece_base_ = pass_->offset() - p.size();
          s->next_in = const_cast<Bytef*>(p.data());
          s->avail_in = static_cast<uInt>(p.size());
        }
      }
      if (!in_member_) {
        if (s->avail_in == 0) {
          eof_ = true;
          return Status::Ok();
        }
        if (s->next_in[0] != 0x1f) {
          if (members_ == 0) return Status::Corrupt("gzip: not a gzip stream");
          LOG_WARN("gzip: ignoring trailing bytes after member " + std::to_string(members_) +
                   " at offset " + std::to_string(InOffset()));
          eof_ = true;
          return Status::Ok();
        }
        if (inflateReset(s) != Z_OK) return Status::IoError("zlib: inflateReset failed");
        in_member_ = true;
        ++members_;
      }
      s->next_out = out_ptr();
      s->avail_out = static_cast<uInt>(out_avail());
      int ret = inflate(s, Z_BLOCK);
      const size_t produced = out_avail() - s->avail_out;
      Produced(produced);
      if (ret == Z_STREAM_END) {
        in_member_ = false;
        if (produced > 0) return Status::Ok();
        continue;
      }
      if (ret == Z_BUF_ERROR) {
        if (blob_done_) {
          return Status::Corrupt("gzip: stream truncated at compressed offset " +
                                 std::to_string(InOffset()));
        }
        continue;  // needs input
      }
      if (ret != Z_OK) {
        return Status::Corrupt(std::string("gzip: ") + (s->msg ? s->msg : "inflate error") +
                               " at compressed offset " + std::to_string(InOffset()));
      }
      if ((s->data_type & 128) && !(s->data_type & 64) &&
          (checkpoints_.empty() || produced_total() - checkpoints_.back().out_offset >= interval_)) {
        GzipCheckpoint c;
        c.out_offset = produced_total();
        c.in_offset = InOffset();
        c.bits = static_cast<uint8_t>(s->data_type & 7);
        std::span<const uint8_t> w = Window();
        c.window_size = static_cast<uint32_t>(w.size());
        if (!w.empty()) c.window_deflate = DeflateWindow(w);
        checkpoints_.push_back(std::move(c));
      }
      if (produced > 0) return Status::Ok();
    }
  }

  uint64_t produced_total() const { return produced(); }
  uint64_t InOffset() const {
    const z_stream* s = z_->get();
    if (piece_ == nullptr) return 0;
    return piece_base_ + static_cast<uint64_t>(s->next_in - piece_);
  }

  BlobPass* pass_;
  std::unique_ptr<ZInflate> z_;
  uint64_t interval_;
  const uint8_t* piece_ = nullptr;
  uint64_t piece_base_ = 0;
  bool blob_done_ = false;
  bool in_member_ = false;
  uint64_t members_ = 0;
  std::vector<GzipCheckpoint> checkpoints_;
};

class ZstdStream : public BufferedStream {
 public:
  ZstdStream(BlobPass* pass, ZstdDCtxPtr d, uint64_t interval)
      : pass_(pass), d_(std::move(d)), interval_(interval) {
    frames_.push_back(ZstdFrame{0, 0});
  }
  std::vector<ZstdFrame> TakeFrames() { return std::move(frames_); }

 private:
  Status Fill() override {
    for (;;) {
      if (in_.pos == in_.size && !blob_done_) {
        ASSIGN_OR_RETURN(std::span<const uint8_t> p, pass_->Next());
        if (p.empty()) {
          blob_done_ = true;
        } else {
          in_ = ZSTD_inBuffer{p.data(), p.size(), 0};
          piece_base_ = pass_->offset() - p.size();
        }
      }
      if (!frame_open_) {
        if (in_.pos == in_.size) {
          eof_ = true;
          return Status::Ok();
        }
        const uint64_t in_off = piece_base_ + in_.pos;
        if (in_off > 0 && produced() - frames_.back().out_offset >= interval_) {
          frames_.push_back(ZstdFrame{in_off, produced()});
        }
        frame_open_ = true;
      }
      ZSTD_outBuffer out{out_ptr(), out_avail(), 0};
      const size_t in_before = in_.pos;
      size_t ret = ZSTD_decompressStream(d_.get(), &out, &in_);
      if (ZSTD_isError(ret)) {
        return Status::Corrupt(std::string("zstd: ") + ZSTD_getErrorName(ret) +
                               " at compressed offset " + std::to_string(piece_base_ + in_.pos));
      }
      Produced(out.pos);
      if (ret == 0) frame_open_ = false;
      if (out.pos > 0) return Status::Ok();
      if (ret != 0 && blob_done_ && in_.pos == in_before) {
        return Status::Corrupt("zstd: stream truncated at compressed offset " +
                               std::to_string(piece_base_ + in_.pos));
      }
    }
  }

  BlobPass* pass_;
  ZstdDCtxPtr d_;
  uint64_t interval_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  uint64_t piece_base_ = 0;
  bool blob_done_ = false;
  bool frame_open_ = false;
  std::vector<ZstdFrame> frames_;
};

}  // namespace

Result<LayerIndex> BuildLayerIndex(BlobSource* source, const BlobDescriptor& blob,
                                   LayerCompression compression,
                                   const IndexBuildOptions& options) {
  RETURN_IF_ERROR(ValidateDigest(blob.digest));
  if (compression == LayerCompression::kUnknown) {
    uint8_t head[4] = {0, 0, 0, 0};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof(head), blob.size));
    RETURN_IF_ERROR(source->ReadAt(blob, 0, std::span<uint8_t>(head, n)));
    compression = SniffCompression(std::span<const uint8_t>(head, n));
  }
  const uint64_t interval = std::max<uint64_t>(options.checkpoint_interval, 64 << 10);
  const bool check_diff_id = !options.expected_diff_id.empty();
  if (check_diff_id) {
    RETURN_IF_ERROR(ValidateDigest(options.expected_diff_id).Annotate("expected DiffID"));
    // An uncompressed layer is its own tar stream: its DiffID is its digest,
    // which the pass verifies anyway.
    if (compression == LayerCompression::kNone && options.expected_diff_id != blob.digest) {
      return Status::Corrupt("layer " + blob.digest + " (uncompressed) does not match its DiffID " +
                             options.expected_diff_id);
    }
  }

  BlobPass pass(source, blob, options);
  std::unique_ptr<BufferedStream> stream;
  GzipStream* gz = nullptr;
  ZstdStream* zs = nullptr;
  switch (compression) {
    case LayerCompression::kNone:
      stream = std::make_unique<PlainStream>(&pass);
      break;
    case LayerCompression::kGzip: {
      ASSIGN_OR_RETURN(std::unique_ptr<ZInflate> z, ZInflate::Create(31));
      auto g = std::make_unique<GzipStream>(&pass, std::move(z), interval);
      gz = g.get();
      stream = std::move(g);
      break;
    }
    case LayerCompression::kZstd: {
      ASSIGN_OR_RETURN(ZstdDCtxPtr d, NewZstdDCtx());
      auto z = std::make_unique<ZstdStream>(&pass, std::move(d), interval);
      zs = z.get();
      stream = std::move(z);
      break;
    }
    default:
      return Status::Unsupported("layer compression not supported");
  }
  Sha256 diff_hash;
  if (check_diff_id && compression != LayerCompression::kNone) stream->HashOutputInto(&diff_hash);
  uint64_t max_output = options.max_uncompressed_bytes;
  std::string limit_why = "max_uncompressed_bytes";
  if (options.max_uncompressed_ratio > 0 &&
      SaturatingMul(options.max_uncompressed_ratio, blob.size) < max_output) {
    max_output = SaturatingMul(options.max_uncompressed_ratio, blob.size);
    limit_why = std::to_string(options.max_uncompressed_ratio) + " times the blob's " +
                std::to_string(blob.size) + " bytes";
  }
  stream->LimitOutput(max_output, std::move(limit_why));
  if (options.cancelled) stream->CancelWith(&options.cancelled);

  LayerIndex index;
  index.blob_digest = blob.digest;
  index.blob_size = blob.size;
  index.compression = compression;

  TarReader tar(stream.get());
  std::unordered_map<std::string, size_t> by_path;
  // Hard-linked inodes. `primary` is the entry that holds the inode's
  // metadata (what a link's link_target names); `links` the hard-link
  // entries sharing it in archive order, `next` the first that may still
  // inherit the inode. Links' targets are resolved once at the end, so each
  // replacement of a primary costs O(1) amortised, not O(links).
  struct Inode {
    size_t primary;
    std::vector<size_t> links;
    size_t next = 0;
  };
  constexpr size_t kNoInode = std::numeric_limits<size_t>::max();
  std::vector<Inode> inodes;
  std::vector<size_t> inode_of;  // per entry
  std::vector<bool> dead;
  TarEntry e;
  uint64_t skipped = 0;
  for (;;) {
    Result<bool> more = tar.Next(&e);
    if (!more.ok()) return more.status().Annotate(blob.digest);
    if (!*more) break;
    // Counted as read (a path that appears twice counts twice): this bounds
    // the memory the pass holds, and a layer cut short would be a wrong tree.
    if (index.entries.size() >= options.max_entries) {
      return Status::Corrupt("layer " + blob.digest + " has more than " +
                             std::to_string(options.max_entries) + " entries (max_entries)");
    }
    size_t inode = kNoInode;
    if (e.type == EntryType::kHardLink) {
      auto it = by_path.find(e.link_target);
      const TarEntry* t = it == by_path.end() ? nullptr : &index.entries[it->second];
      if (t == nullptr || t->type == EntryType::kDirectory || e.link_target == e.path) {
        // A hostile layer may hold millions of these; the log keeps 100.
        if (++skipped <= 100) {
          LOG_WARN("tar: skipping hard link '" + e.path + "': target '" + e.link_target +
                   (t == nullptr ? "' is not in the layer before it" : "' cannot be linked"));
        }
        continue;
      }
      if (inode_of[it->second] == kNoInode) {
        inode_of[it->second] = inodes.size();
        inodes.push_back(Inode{it->second, {}, 0});
      }
      inode = inode_of[it->second];
      e.size = t->size;
      e.data_offset = t->data_offset;
    }
    auto [it, inserted] = by_path.try_emplace(e.path, index.entries.size());
    if (!inserted) {
      LOG_DEBUG("tar: '" + e.path + "' appears again; the later entry wins");
      const size_t old = it->second;
      dead[old] = true;
      it->second = index.entries.size();
      // Extraction unlinks the old file; its inode lives on in its hard links.
      // The first surviving link takes over the old entry's metadata and the
      // others now share its inode.
      if (inode_of[old] != kNoInode && inodes[inode_of[old]].primary == old) {
        Inode& n = inodes[inode_of[old]];
        while (n.next < n.links.size() && dead[n.links[n.next]]) ++n.next;
        if (n.next < n.links.size()) {
          const size_t heir = n.links[n.next++];
          std::string heir_path = std::move(index.entries[heir].path);
          index.entries[heir] = std::move(index.entries[old]);  // dead: dropped below
          index.entries[heir].path = std::move(heir_path);
          n.primary = heir;
        }
      }
    }
    if (inode != kNoInode) inodes[inode].links.push_back(index.entries.size());
    index.entries.push_back(std::move(e));
    inode_of.push_back(inode);
    dead.push_back(false);
    e = TarEntry();
  }
  for (size_t i = 0; i < index.entries.size(); ++i) {
    if (!dead[i] && index.entries[i].type == EntryType::kHardLink) {
      index.entries[i].link_target = index.entries[inodes[inode_of[i]].primary].path;
    }
  }
  index.tar_end_marker = tar.stats().saw_end_marker;
  index.skipped_entries = tar.stats().skipped + skipped;

  // Drain: the compressed stream must end cleanly (gzip CRCs are checked).
  for (;;) {
    Result<uint64_t> n = stream->Skip(uint64_t{1} << 40);
    if (!n.ok()) return n.status().Annotate(blob.digest);
    if (*n == 0) break;
  }
  index.uncompressed_size = stream->Position();
  if (index.uncompressed_size != stream->produced()) {
    return Status::Corrupt("layer " + blob.digest + ": the tar walk covered " +
                           std::to_string(index.uncompressed_size) + " of " +
                           std::to_string(stream->produced()) + " uncompressed bytes");
  }
  RETURN_IF_ERROR(pass.Finish());
  if (compression == LayerCompression::kNone) {
    index.diff_id = blob.digest;
  } else if (check_diff_id) {
    std::string got = diff_hash.FinishDigest();
    if (got != options.expected_diff_id) {
      return Status::Corrupt("layer " + blob.digest + ": its uncompressed stream (" + got +
                             ") does not match its DiffID " + options.expected_diff_id);
    }
    index.diff_id = std::move(got);
  }

  if (gz) {
    index.checkpoints = gz->TakeCheckpoints();
    index.gzip_members = gz->members();
  }
  if (zs) index.zstd_frames = zs->TakeFrames();
  if (compression == LayerCompression::kGzip && index.checkpoints.empty()) {
    return Status::Corrupt("gzip: no deflate data in " + blob.digest);
  }
  size_t live = 0;
  for (size_t i = 0; i < index.entries.size(); ++i) {
    if (dead[i]) continue;
    if (live != i) index.entries[live] = std::move(index.entries[i]);
    ++live;
  }
  index.entries.resize(live);
  return index;
}

}  // namespace regfs
