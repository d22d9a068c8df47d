#include "fs/image_fs.h"

#include <algorithm>

namespace regfs {

ImageFs::ImageFs(ImageFsInput input, BlobSource* blobs, std::function<std::string()> status,
                 ImageFsOptions opts)
    : input_(std::move(input)), blobs_(blobs), status_(std::move(status)), opts_(opts) {
  if (opts_.readahead_threads > 0) {
    prefetcher_ = std::make_unique<Prefetcher>(blobs_, opts_.readahead_threads,
                                               opts_.readahead_job);
  }
  Build();
}

ImageFs::~ImageFs() = default;

void ImageFs::Build() {
  auto file = [&](Ino parent, std::string name, ContentKind kind, uint32_t id, uint64_t size) {
    Node n;
    n.attr.mode = S_IFREG | 0444;
    n.attr.size = size;
    n.attr.uid = opts_.uid;
    n.attr.gid = opts_.gid;
    n.attr.mtime_sec = input_.mtime_sec;
    n.kind = kind;
    n.content_id = id;
    return tree_.AddChild(parent, std::move(name), std::move(n));
  };
  auto add_inline = [&](Ino parent, std::string name, const std::string& bytes) {
    inline_.push_back(bytes);
    file(parent, std::move(name), ContentKind::kInline,
         static_cast<uint32_t>(inline_.size() - 1), bytes.size());
  };
  add_inline(kRootIno, "manifest.json", input_.manifest_bytes);
  add_inline(kRootIno, "config.json", input_.config_bytes);
  if (input_.index_bytes) add_inline(kRootIno, "index.json", *input_.index_bytes);

  Ino blobs = tree_.AddDir(kRootIno, "blobs");
  for (size_t i = 0; i < input_.layers.size(); ++i) {
    file(blobs, input_.layers[i].digest, ContentKind::kBlob, static_cast<uint32_t>(i),
         input_.layers[i].size);
  }
  Ino meta = tree_.AddDir(kRootIno, ".regfs");
  file(meta, "status.json", ContentKind::kDynamic, 0, 0);
  for (Ino dir : {kRootIno, blobs, meta}) {
    tree_.SetTimesAndOwner(dir, input_.mtime_sec, opts_.uid, opts_.gid);
  }
}

Result<size_t> ImageFs::Read(const Node& node, uint64_t offset, std::span<uint8_t> out) {
  switch (node.kind) {
    case ContentKind::kInline: {
      const std::string& s = inline_.at(node.content_id);
      if (offset >= s.size()) return size_t{0};
      size_t n = std::min<size_t>(out.size(), s.size() - offset);
      std::copy_n(s.data() + offset, n, out.data());
      return n;
    }
    case ContentKind::kBlob: {
      const BlobDescriptor& blob = input_.layers.at(node.content_id);
      if (offset >= blob.size) return size_t{0};
      size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), blob.size - offset));
      MaybeReadAhead(blob, offset, n);
      RETURN_IF_ERROR(blobs_->ReadAt(blob, offset, out.first(n)));
      return n;
    }
    default:
      return Status::InvalidArgument("not a readable file");
  }
}

void ImageFs::MaybeReadAhead(const BlobDescriptor& blob, uint64_t offset, size_t len) {
  if (!prefetcher_) return;
  // The kernel issues its own read-ahead asynchronously, from several threads,
  // so "sequential" allows a little reordering around the expected offset.
  constexpr uint64_t kSlack = 2ull << 20;
  uint64_t from = 0, count = 0;
  {
    std::lock_guard lock(streams_mu_);
    Stream& st = streams_[blob.digest];
    bool sequential = st.next != 0 && offset + kSlack >= st.next && offset <= st.next + kSlack;
    if (!sequential) {
      st = Stream{offset + len, 0, 0};
      return;
    }
    st.next = std::max(st.next, offset + len);
    st.window = st.window == 0 ? opts_.readahead_job
                               : std::min(st.window * 2, opts_.readahead_max);
    uint64_t target = std::min(blob.size, st.next + st.window);
    from = std::max(st.ahead_to, st.next);
    if (target <= from) return;
    count = target - from;
    st.ahead_to = target;
  }
  prefetcher_->Enqueue(blob, from, count);
}

Result<std::string> ImageFs::Generate(const Node& node) {
  if (node.kind != ContentKind::kDynamic) return Status::InvalidArgument("not dynamic");
  return status_ ? status_() : std::string("{}\n");
}

Status ImageFs::Populate(uint32_t id) {
  return Status::NotFound("no pending directory " + std::to_string(id));
}

}  // namespace regfs
