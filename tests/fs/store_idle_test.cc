// The store releases idle layers (issue 14): a layer looked up and left
// idle loses its tree, its Layer handle and its registry client; one the
// kernel still holds an inode of is not released (the kernel is asked to
// drop its unused entries first); a released layer looked up again is made
// from the cache and serves the same bytes without a registry request.
// Unit level: the store without a mount, the kernel's references played by
// a KernelRefs the test fills.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "fs/fuse_daemon.h"
#include "fs/mount.h"
#include "fs/store.h"
#include "reader/base/base64.h"
#include "tests/support/fault_server.h"
#include "tests/support/fd_count.h"
#include "tests/support/fuse_env.h"
#include "tests/support/image_builder.h"
#include "tests/support/status_matchers.h"

namespace regfs {
namespace {

namespace tt = regfs::testing;
using TE = tt::TarEntry;
using Clock = LayerStore::Clock;

class StoreIdleTest : public tt::FdCheckedTest {
 protected:
  void SetUp() override {
    FdCheckedTest::SetUp();
    ASSERT_OK(server_.Start());
    tt::ImageSpec spec;
    spec.layers.push_back({{TE::Dir("etc"), TE::File("etc/base", "base layer bytes"),
                            TE::Dir("usr"), TE::File("usr/a", std::string(300000, 'a')),
                            TE::Symlink("usr/l", "a"), TE::Hardlink("usr/h", "usr/a")},
                           tt::Compression::kGzip});
    spec.layers.push_back({{TE::Dir("app"), TE::File("app/own", "the image's own bytes")},
                           tt::Compression::kGzip});
    image_ = tt::BuildImage(spec);
    server_.AddResource("/v2/team/app/manifests/1.0", image_.manifest,
                        image_.manifest_descriptor.media_type);
    server_.AddResource("/v2/team/app/blobs/" + image_.config_descriptor.digest, image_.config);
    for (const tt::BuiltLayer& l : image_.layers) {
      server_.AddResource("/v2/team/app/blobs/" + l.descriptor.digest, l.blob);
    }
    dir_ = std::make_unique<tt::TempDir>("regfs-store-idle");
    CommonOptions common;
    common.tls_verify = false;
    common.cache_dir = dir_->Sub("cache");
    common.idle_timeout_s = 600;
    Result<std::unique_ptr<ChunkCache>> cache = OpenCache(common);
    ASSERT_OK(cache.status());
    cache_ = std::move(*cache);
    store_ = std::make_unique<LayerStore>(cache_.get(), common, CacheIndexStore(cache_.get()));
    store_->AttachKernel(&refs_, [this](Ino parent, std::string_view name) {
      invalidated_.emplace_back(parent, std::string(name));
      return true;
    });
  }
  void TearDown() override {
    store_.reset();
    cache_.reset();
    int open = -1;
    for (int i = 0; i < 300 && (open = server_.open_connections()) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(open, 0) << "connections left open";
    server_.Stop();
    dir_.reset();
    FdCheckedTest::TearDown();
  }

  std::string ImageName() const {
    return Base64Encode(server_.host_port() + "/team/app:1.0");
  }
  nlohmann::json Status() const { return nlohmann::json::parse(store_->StatusJson()); }

  // Looks `name` up as the daemon does: a miss asks the store.
  Result<Ino> Lookup(Ino parent, const std::string& name) {
    Result<Ino> ino = store_->tree().Lookup(parent, name);
    if (ino.ok()) return ino;
    bool cache_negative = true;
    RETURN_IF_ERROR(store_->LookupMiss(parent, name, &cache_negative));
    return store_->tree().Lookup(parent, name);
  }
  // layer i's diff/, filled.
  Result<Ino> Diff(size_t i) {
    ASSIGN_OR_RETURN(Ino dir, Lookup(store_->layers_dir(), image_.layers[i].descriptor.digest));
    ASSIGN_OR_RETURN(Ino diff, store_->tree().Lookup(dir, "diff"));
    if (uint32_t id = store_->tree().PendingId(diff)) RETURN_IF_ERROR(store_->Populate(id));
    return diff;
  }
  // The bytes of `path` below `dir`, or "<error>".
  std::string ReadFile(Ino dir, const std::string& path) {
    Result<std::string> r = TryRead(dir, path);
    return r.ok() ? *r : "<" + r.status().ToString() + ">";
  }
  Result<std::string> TryRead(Ino dir, const std::string& path) {
    Ino ino = dir;
    size_t start = 0;
    while (start <= path.size()) {
      size_t slash = path.find('/', start);
      if (slash == std::string::npos) slash = path.size();
      ASSIGN_OR_RETURN(ino, store_->tree().Lookup(ino, path.substr(start, slash - start)));
      start = slash + 1;
    }
    ASSIGN_OR_RETURN(Node node, store_->tree().Get(ino));
    std::string out(node.attr.size, '\0');
    ASSIGN_OR_RETURN(size_t n, store_->Read(node, 0, std::span(reinterpret_cast<uint8_t*>(out.data()),
                                                                out.size())));
    out.resize(n);
    return out;
  }

  tt::FaultServer server_;
  tt::BuiltImage image_;
  std::unique_ptr<tt::TempDir> dir_;
  std::unique_ptr<ChunkCache> cache_;
  KernelRefs refs_;
  std::vector<std::pair<Ino, std::string>> invalidated_;
  std::unique_ptr<LayerStore> store_;
};

TEST_F(StoreIdleTest, AnIdleImageIsReleasedAndComesBackWithoutTheRegistry) {
  const uint64_t empty_nodes = Status()["treeNodes"];
  ASSERT_TRUE(Lookup(kRootIno, ImageName()).ok());
  Result<Ino> base = Diff(0);
  Result<Ino> own = Diff(1);
  ASSERT_OK(base.status());
  ASSERT_OK(own.status());
  EXPECT_EQ(ReadFile(*base, "etc/base"), "base layer bytes");
  EXPECT_EQ(ReadFile(*base, "usr/h"), std::string(300000, 'a'));
  EXPECT_EQ(ReadFile(*own, "app/own"), "the image's own bytes");
  nlohmann::json before = Status();
  EXPECT_EQ(before["liveLayerHandles"], 2) << before.dump();
  EXPECT_EQ(before["registryClients"], 1) << before.dump();
  EXPECT_GT(before["treeNodes"].get<uint64_t>(), empty_nodes + 10) << before.dump();

  // Used a moment ago: kept.
  EXPECT_EQ(store_->ReleaseIdle(Clock::now()), 0u);
  // Idle, and nothing in the kernel: released.
  EXPECT_EQ(store_->ReleaseIdle(Clock::now() + std::chrono::hours(1)), 2u);
  nlohmann::json after = Status();
  EXPECT_EQ(after["liveLayers"], 0) << after.dump();
  EXPECT_EQ(after["releasedLayers"], 2) << after.dump();
  EXPECT_EQ(after["liveLayerHandles"], 0) << after.dump();
  EXPECT_EQ(after["registryClients"], 0) << after.dump();
  // What stays: the image's symlink.
  EXPECT_EQ(after["treeNodes"].get<uint64_t>(), empty_nodes + 1) << after.dump();
  EXPECT_EQ(after["layers"][0]["state"], "released") << after.dump();

  // Looked up again (podman's path walk: the image's link, then
  // .layers/<digest>): made from the cache, no request to the registry.
  const uint64_t requests = server_.total_requests();
  ASSERT_TRUE(Lookup(kRootIno, ImageName()).ok());
  base = Diff(0);
  own = Diff(1);
  ASSERT_OK(base.status());
  ASSERT_OK(own.status());
  EXPECT_EQ(ReadFile(*base, "etc/base"), "base layer bytes");
  EXPECT_EQ(ReadFile(*base, "usr/a"), std::string(300000, 'a'));
  Result<Ino> usr = store_->tree().Lookup(*base, "usr");
  ASSERT_OK(usr.status());
  Result<Ino> link = store_->tree().Lookup(*usr, "l");
  ASSERT_OK(link.status());
  EXPECT_EQ(store_->tree().Get(*link)->link_target, "a");
  EXPECT_EQ(ReadFile(*own, "app/own"), "the image's own bytes");
  EXPECT_EQ(server_.total_requests(), requests);
  nlohmann::json again = Status();
  EXPECT_EQ(again["liveLayers"], 2) << again.dump();
  EXPECT_EQ(again["liveLayerHandles"], 2) << again.dump();
  EXPECT_EQ(again["treeNodes"], before["treeNodes"]) << again.dump();
}

TEST_F(StoreIdleTest, ALayerTheKernelHoldsIsNotReleased) {
  ASSERT_TRUE(Lookup(kRootIno, ImageName()).ok());
  Result<Ino> base = Diff(0);
  ASSERT_OK(base.status());
  ASSERT_TRUE(Diff(1).ok());
  // An open file deep in the base layer (or a cwd, or an overlay lowerdir:
  // to the daemon, a lookup count the kernel has not forgotten).
  Result<Ino> usr = store_->tree().Lookup(*base, "usr");
  ASSERT_OK(usr.status());
  Result<Ino> file = store_->tree().Lookup(*usr, "a");
  ASSERT_OK(file.status());
  refs_.Add(*file);
  auto later = Clock::now() + std::chrono::hours(1);
  EXPECT_EQ(store_->ReleaseIdle(later), 1u);  // the other layer goes
  nlohmann::json s = Status();
  EXPECT_EQ(s["liveLayers"], 1) << s.dump();
  EXPECT_EQ(s["liveLayerHandles"], 1) << s.dump();
  EXPECT_EQ(s["registryClients"], 1) << s.dump();
  // The kernel was asked to drop what it caches of the held layer.
  // (Its name, and every name below it that the kernel holds.)
  // usr/a is usr/h too (a hard link): both names.
  ASSERT_EQ(invalidated_.size(), 3u);
  EXPECT_EQ(invalidated_[0].first, store_->layers_dir());
  EXPECT_EQ(invalidated_[0].second, image_.layers[0].descriptor.digest);
  EXPECT_EQ(invalidated_[1], std::make_pair(*usr, std::string("a")));
  EXPECT_EQ(invalidated_[2], std::make_pair(*usr, std::string("h")));
  // Still served, same inode.
  EXPECT_EQ(ReadFile(*base, "usr/a"), std::string(300000, 'a'));
  EXPECT_EQ(*store_->tree().Lookup(*usr, "a"), *file);
  // Once the kernel forgets it, the layer goes at the next idle pass.
  refs_.Forget(*file, 1);
  EXPECT_EQ(store_->ReleaseIdle(later), 1u);
  s = Status();
  EXPECT_EQ(s["liveLayers"], 0) << s.dump();
  EXPECT_EQ(s["registryClients"], 0) << s.dump();
}

TEST_F(StoreIdleTest, NothingIsReleasedWithoutTheKernelsCounts) {
  CommonOptions common;
  common.tls_verify = false;
  common.idle_timeout_s = 1;
  LayerStore store(cache_.get(), common, CacheIndexStore(cache_.get()));
  bool cache_negative = true;
  ASSERT_OK(store.LookupMiss(kRootIno, ImageName(), &cache_negative));
  EXPECT_EQ(store.ReleaseIdle(Clock::now() + std::chrono::hours(1)), 0u);
  EXPECT_EQ(nlohmann::json::parse(store.StatusJson())["liveLayers"], 2);
}

}  // namespace
}  // namespace regfs
