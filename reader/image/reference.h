// Image references parsed and normalised as docker does:
//   alpine                      -> docker.io/library/alpine:latest
//   user/app:1.0                -> docker.io/user/app:1.0
//   127.0.0.1:5000/a/b:tag      -> registry 127.0.0.1:5000, repository a/b
//   host/a@sha256:<hex>         -> by digest (a tag may also be present)
// A first component is a registry host when it contains '.' or ':' or is
// "localhost" (or is uppercase-free and matches those rules, as docker's
// reference package decides). Bad references get InvalidArgument with a
// message saying what is wrong.
#ifndef REGFS_READER_IMAGE_REFERENCE_H_
#define REGFS_READER_IMAGE_REFERENCE_H_

#include <string>
#include <string_view>

#include "reader/base/status.h"

namespace regfs {

struct Reference {
  std::string registry;    // "docker.io", "127.0.0.1:5000", "quay.io"
  std::string repository;  // "library/alpine", "a/b"
  std::string tag;         // "latest" when neither tag nor digest was given
  std::string digest;      // "sha256:<hex>" or empty

  // What to ask the registry for: the digest when present, else the tag.
  std::string ManifestReference() const { return digest.empty() ? tag : digest; }
  // "docker.io/library/alpine:latest", "host/a/b@sha256:..", "host/a/b:t@sha256:.."
  std::string Normalized() const;
  // The host to connect to: docker.io -> "registry-1.docker.io".
  std::string ApiHost() const;
};

Result<Reference> ParseReference(std::string_view ref);

}  // namespace regfs

#endif  // REGFS_READER_IMAGE_REFERENCE_H_
