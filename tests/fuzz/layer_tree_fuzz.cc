// libFuzzer target: the layer tree builder (AddLayerEntries) on arbitrary
// entry lists, in both whiteout forms and both hard-link metadata modes,
// sometimes under tight limits. Afterwards every directory must list, with
// valid, unique, sorted names that Lookup finds (tree_fuzz_util.h).
#include <cstdint>
#include <cstdlib>

#include "fs/layer_tree.h"
#include "reader/base/log.h"
#include "tests/fuzz/tree_fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace regfs;
  regfs::SetLogLevel(LogLevel::kError);
  fuzz::Bytes in(data, size);
  uint8_t flags = in.Next();
  LayerIndex index;
  index.entries = fuzz::Entries(in, 4096);
  LayerTreeLimits limits;
  if (flags & 1) limits.max_entries = flags >> 2;
  if (flags & 2) limits.max_tree_bytes = 4096u * (flags >> 2);
  for (WhiteoutMode mode : {WhiteoutMode::kAsInTar, WhiteoutMode::kOverlay}) {
    Tree t;
    Ino root = t.AddDir(kRootIno, "layer", 0755);
    LayerTreeStats st = AddLayerEntries(
        t, root, 0, index, mode,
        (flags & 4) ? HardLinkMetadata::kApplyLinkHeader : HardLinkMetadata::kKeepTarget, limits);
    uint64_t names = fuzz::CheckTree(t, kRootIno);
    if (names > index.entries.size() * 2100 + 1) fuzz::Fail("more names than entries could make");
    if (st.over_limit > st.skipped) fuzz::Fail("over_limit counts more than skipped");
    // Count() holds the root and "layer" too.
    if ((flags & 1) && t.Count() > limits.max_entries + 2) fuzz::Fail("entry limit not kept");
  }
  return 0;
}
