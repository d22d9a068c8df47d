#include "reader/layer/layer_reader.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef REGFS_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

namespace regfs {

// Compressed input from a position onwards, fetched in chunk-aligned pieces.
class InputFeed {
 public:
  InputFeed(BlobSource* source, const BlobDescriptor* blob, uint64_t pos, size_t chunk,
            std::atomic<uint64_t>* fetched)
      : source_(source), blob_(blob), pos_(pos), chunk_(std::max<size_t>(chunk, 4096)),
        fetched_(fetched) {}

  // The next piece; empty at the end of the blob.
  Result<std::span<uint8_t>> Next() {
    if (pos_ >= blob_->size) return std::span<uint8_t>();
    const uint64_t end = std::min<uint64_t>((pos_ / chunk_ + 1) * chunk_, blob_->size);
    buf_.resize(static_cast<size_t>(end - pos_));
    RETURN_IF_ERROR(source_->ReadAt(*blob_, pos_, buf_));
    fetched_->fetch_add(buf_.size(), std::memory_order_relaxed);
    pos_ = end;
    return std::span<uint8_t>(buf_);
  }

 private:
  BlobSource* source_;
  const BlobDescriptor* blob_;
  uint64_t pos_;
  size_t chunk_;
  std::atomic<uint64_t>* fetched_;
  std::vector<uint8_t> buf_;
};

class LayerReader::Decoder {
 public:
  virtual ~Decoder() = default;
  uint64_t pos() const { return pos_; }
  // Exactly out.size() more bytes of the stream, or an error.
  Status Produce(std::span<uint8_t> out) {
    Status st = ProduceImpl(out);
    if (st.ok()) pos_ += out.size();
    return st;
  }

 protected:
  explicit Decoder(uint64_t pos) : pos_(pos) {}
  virtual Status ProduceImpl(std::span<uint8_t> out) = 0;
  static Status PastEnd() {
    return Status::Corrupt("layer: compressed stream ends before the indexed size");
  }

 private:
  uint64_t pos_;
};

namespace {

class ZlibDecoder : public LayerReader::Decoder {
 public:
  static Result<std::unique_ptr<Decoder>> Create(const GzipCheckpoint& cp, InputFeed feed) {
    ASSIGN_OR_RETURN(std::unique_ptr<ZInflate> z, ZInflate::Create(-15));
    std::unique_ptr<ZlibDecoder> d(new ZlibDecoder(cp.out_offset, std::move(z), std::move(feed)));
    z_stream* s = d->z_->get();
    RETURN_IF_ERROR(d->Fill());
    if (cp.bits > 0) {
      if (s->avail_in == 0) return PastEnd();
      const int byte = s->next_in[0];
      ++s->next_in;
      --s->avail_in;
      if (inflatePrime(s, cp.bits, byte >> (8 - cp.bits)) != Z_OK) {
        return Status::Corrupt("zlib: inflatePrime failed");
      }
    }
    if (cp.window_size > 0) {
      std::vector<uint8_t> window(cp.window_size);
      RETURN_IF_ERROR(InflateWindow(cp.window_deflate, cp.window_size, window.data()));
      if (inflateSetDictionary(s, window.data(), cp.window_size) != Z_OK) {
        return Status::Corrupt("zlib: inflateSetDictionary failed");
      }
    }
    return std::unique_ptr<Decoder>(std::move(d));
  }

 private:
  ZlibDecoder(uint64_t pos, std::unique_ptr<ZInflate> z, InputFeed feed)
      : Decoder(pos), z_(std::move(z)), feed_(std::move(feed)) {}

  Status Fill() {
    ASSIGN_OR_RETURN(std::span<uint8_t> p, feed_.Next());
    z_->get()->next_in = p.data();
    z_->get()->avail_in = static_cast<uInt>(p.size());
    return Status::Ok();
  }

  Status ProduceImpl(std::span<uint8_t> out) override {
    z_stream* s = z_->get();
    s->next_out = out.data();
    s->avail_out = static_cast<uInt>(out.size());
    while (s->avail_out > 0) {
      if (s->avail_in == 0) {
        RETURN_IF_ERROR(Fill());
        if (s->avail_in == 0) return PastEnd();
      }
      if (trailer_left_ > 0) {
        const uInt k = std::min<uInt>(trailer_left_, s->avail_in);
        s->next_in += k;
        s->avail_in -= k;
        trailer_left_ -= k;
        continue;
      }
      int ret = inflate(s, Z_NO_FLUSH);
      if (ret == Z_STREAM_END) {
        // The next gzip member: from a checkpoint we inflate raw deflate, so
        // the first member's 8-byte trailer is skipped by hand; later members
        // are read in gzip mode, which consumes header and trailer itself.
        if (raw_) {
          trailer_left_ = 8;
          raw_ = false;
          if (inflateReset2(s, 31) != Z_OK) return Status::IoError("zlib: inflateReset2 failed");
        } else if (inflateReset(s) != Z_OK) {
          return Status::IoError("zlib: inflateReset failed");
        }
        continue;
      }
      if (ret == Z_BUF_ERROR && s->avail_in == 0) continue;
      if (ret != Z_OK) {
        return Status::Corrupt(std::string("gzip: ") + (s->msg ? s->msg : "inflate error"));
      }
    }
    return Status::Ok();
  }

  std::unique_ptr<ZInflate> z_;
  InputFeed feed_;
  bool raw_ = true;
  uInt trailer_left_ = 0;
};

#ifdef REGFS_HAVE_ISAL
class IsalDecoder : public LayerReader::Decoder {
 public:
  static Result<std::unique_ptr<Decoder>> Create(const GzipCheckpoint& cp, InputFeed feed) {
    std::unique_ptr<IsalDecoder> d(new IsalDecoder(cp.out_offset, std::move(feed)));
    inflate_state* st = d->st_.get();
    isal_inflate_init(st);
    st->crc_flag = ISAL_DEFLATE;
    RETURN_IF_ERROR(d->Fill());
    if (cp.window_size > 0) {
      std::vector<uint8_t> window(cp.window_size);
      RETURN_IF_ERROR(InflateWindow(cp.window_deflate, cp.window_size, window.data()));
      if (isal_inflate_set_dict(st, window.data(), cp.window_size) != COMP_OK) {
        return Status::Corrupt("isa-l: set_dict failed");
      }
    }
    if (cp.bits > 0) {
      if (st->avail_in == 0) return PastEnd();
      // The unread high bits of the previous byte go into the bit buffer,
      // which ISA-L consumes from its low end (deflate's bit order).
      st->read_in = static_cast<uint64_t>(st->next_in[0] >> (8 - cp.bits));
      st->read_in_length = cp.bits;
      ++st->next_in;
      --st->avail_in;
    }
    return std::unique_ptr<Decoder>(std::move(d));
  }

 private:
  IsalDecoder(uint64_t pos, InputFeed feed)
      : Decoder(pos), st_(std::make_unique<inflate_state>()), feed_(std::move(feed)) {}

  Status Fill() {
    ASSIGN_OR_RETURN(std::span<uint8_t> p, feed_.Next());
    st_->next_in = p.data();
    st_->avail_in = static_cast<uint32_t>(p.size());
    return Status::Ok();
  }

  Status ProduceImpl(std::span<uint8_t> out) override {
    inflate_state* st = st_.get();
    st->next_out = out.data();
    st->avail_out = static_cast<uint32_t>(out.size());
    while (st->avail_out > 0) {
      if (st->avail_in == 0) {
        RETURN_IF_ERROR(Fill());
        if (st->avail_in == 0) return PastEnd();
      }
      const uint32_t out_before = st->avail_out;
      const uint32_t in_before = st->avail_in;
      int ret = isal_inflate(st);
      if (ret != ISAL_DECOMP_OK) {
        return Status::Corrupt("isa-l: inflate error " + std::to_string(ret));
      }
      // Only single-member streams come here (see NewDecoder): the end of
      // the member is the end of the stream.
      if (st->block_state == ISAL_BLOCK_FINISH && st->avail_out > 0) return PastEnd();
      if (st->avail_out == out_before && st->avail_in == in_before && st->avail_in > 0) {
        return Status::Corrupt("isa-l: inflate made no progress");
      }
    }
    return Status::Ok();
  }

  std::unique_ptr<inflate_state> st_;
  InputFeed feed_;
};
#endif

class ZstdDecoder : public LayerReader::Decoder {
 public:
  static Result<std::unique_ptr<Decoder>> Create(const ZstdFrame& f, InputFeed feed) {
    ASSIGN_OR_RETURN(ZstdDCtxPtr d, NewZstdDCtx());
    return std::unique_ptr<Decoder>(new ZstdDecoder(f.out_offset, std::move(d), std::move(feed)));
  }

 private:
  ZstdDecoder(uint64_t pos, ZstdDCtxPtr d, InputFeed feed)
      : Decoder(pos), d_(std::move(d)), feed_(std::move(feed)) {}

  Status ProduceImpl(std::span<uint8_t> out) override {
    ZSTD_outBuffer ob{out.data(), out.size(), 0};
    while (ob.pos < ob.size) {
      if (in_.pos == in_.size && !input_done_) {
        ASSIGN_OR_RETURN(std::span<uint8_t> p, feed_.Next());
        if (p.empty()) input_done_ = true;
        in_ = ZSTD_inBuffer{p.data(), p.size(), 0};
      }
      const size_t before_out = ob.pos, before_in = in_.pos;
      size_t ret = ZSTD_decompressStream(d_.get(), &ob, &in_);
      if (ZSTD_isError(ret)) return Status::Corrupt(std::string("zstd: ") + ZSTD_getErrorName(ret));
      if (input_done_ && ob.pos == before_out && in_.pos == before_in) return PastEnd();
    }
    return Status::Ok();
  }

  ZstdDCtxPtr d_;
  InputFeed feed_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool input_done_ = false;
};

}  // namespace

LayerReader::LayerReader(BlobSource* source, BlobDescriptor blob,
                         std::shared_ptr<const LayerIndex> index, LayerReaderOptions options)
    : source_(source), blob_(std::move(blob)), index_(std::move(index)), options_(options),
      fetched_(std::make_shared<std::atomic<uint64_t>>(0)) {
  if (!HaveIsal()) options_.engine = InflateEngine::kZlib;
}

LayerReader::~LayerReader() = default;

LayerReaderStats LayerReader::stats() const {
  LayerReaderStats s;
  s.decoders_created = created_.load();
  s.decoders_reused = reused_.load();
  s.bytes_discarded = discarded_.load();
  s.compressed_fetched = fetched_->load();
  return s;
}

Result<std::unique_ptr<LayerReader::Decoder>> LayerReader::NewDecoder(uint64_t offset) {
  created_.fetch_add(1, std::memory_order_relaxed);
  const LayerIndex& x = *index_;
  if (x.compression == LayerCompression::kGzip) {
    auto it = std::upper_bound(x.checkpoints.begin(), x.checkpoints.end(), offset,
                               [](uint64_t o, const GzipCheckpoint& c) { return o < c.out_offset; });
    if (it == x.checkpoints.begin()) return Status::Corrupt("layer index: no checkpoint");
    const GzipCheckpoint& cp = *(it - 1);
    InputFeed feed(source_, &blob_, cp.in_offset - (cp.bits ? 1 : 0), options_.input_chunk,
                   fetched_.get());
#ifdef REGFS_HAVE_ISAL
    // ISA-L keeps up to 8 bytes past a member's end in its bit buffer, so
    // crossing into the next gzip member is left to zlib.
    if (options_.engine == InflateEngine::kIsal && x.gzip_members <= 1) {
      return IsalDecoder::Create(cp, std::move(feed));
    }
#endif
    return ZlibDecoder::Create(cp, std::move(feed));
  }
  auto it = std::upper_bound(x.zstd_frames.begin(), x.zstd_frames.end(), offset,
                             [](uint64_t o, const ZstdFrame& f) { return o < f.out_offset; });
  if (it == x.zstd_frames.begin()) return Status::Corrupt("layer index: no zstd frame");
  const ZstdFrame& f = *(it - 1);
  return ZstdDecoder::Create(
      f, InputFeed(source_, &blob_, f.in_offset, options_.input_chunk, fetched_.get()));
}

Result<size_t> LayerReader::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  const LayerIndex& x = *index_;
  if (x.blob_digest != blob_.digest || x.blob_size != blob_.size) {
    return Status::InvalidArgument("layer: index of " + x.blob_digest + " used for " +
                                   blob_.digest);
  }
  if (offset >= x.uncompressed_size || out.empty()) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), x.uncompressed_size - offset));
  out = out.first(n);
  if (x.compression == LayerCompression::kNone) {
    if (offset + n > blob_.size) return Status::Corrupt("layer: read beyond the blob");
    RETURN_IF_ERROR(source_->ReadAt(blob_, offset, out));
    return n;
  }

  // The restart point a fresh decoder would use.
  uint64_t restart = 0;
  if (x.compression == LayerCompression::kGzip) {
    auto it = std::upper_bound(x.checkpoints.begin(), x.checkpoints.end(), offset,
                               [](uint64_t o, const GzipCheckpoint& c) { return o < c.out_offset; });
    if (it != x.checkpoints.begin()) restart = (it - 1)->out_offset;
  } else {
    auto it = std::upper_bound(x.zstd_frames.begin(), x.zstd_frames.end(), offset,
                               [](uint64_t o, const ZstdFrame& f) { return o < f.out_offset; });
    if (it != x.zstd_frames.begin()) restart = (it - 1)->out_offset;
  }

  std::unique_ptr<Decoder> d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      const uint64_t p = (*it)->pos();
      if (p <= offset && p >= restart && (best == idle_.end() || p > (*best)->pos())) best = it;
    }
    if (best != idle_.end()) {
      d = std::move(*best);
      idle_.erase(best);
    }
  }
  if (d) {
    reused_.fetch_add(1, std::memory_order_relaxed);
  } else {
    ASSIGN_OR_RETURN(d, NewDecoder(offset));
  }

  if (d->pos() < offset) {
    std::vector<uint8_t> scratch(static_cast<size_t>(std::min<uint64_t>(offset - d->pos(), 256 << 10)));
    while (d->pos() < offset) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(offset - d->pos(), scratch.size()));
      RETURN_IF_ERROR(d->Produce(std::span<uint8_t>(scratch.data(), k)));
      discarded_.fetch_add(k, std::memory_order_relaxed);
    }
  }
  RETURN_IF_ERROR(d->Produce(out));

  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_front(std::move(d));
  while (idle_.size() > options_.max_live_decoders) idle_.pop_back();
  return n;
}

Result<size_t> LayerReader::Read(const TarEntry& entry, uint64_t offset, std::span<uint8_t> out) {
  if (entry.type != EntryType::kRegular && entry.type != EntryType::kHardLink) {
    return Status::InvalidArgument("layer: '" + entry.path + "' is not a regular file");
  }
  if (offset >= entry.size) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), entry.size - offset));
  return ReadAt(entry.data_offset + offset, out.first(n));
}

}  // namespace regfs
