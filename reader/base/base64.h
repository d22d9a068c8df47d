// Base64 (RFC 4648): the standard alphabet with padding (auth headers, auth
// files, podman's layer-store names) and the URL alphabet without padding
// (JWTs). One implementation for the whole project.
#ifndef REGFS_READER_BASE_BASE64_H_
#define REGFS_READER_BASE_BASE64_H_

#include <optional>
#include <string>
#include <string_view>

namespace regfs {

// Standard alphabet, padded; or (url) URL alphabet, unpadded.
std::string Base64Encode(std::string_view in, bool url = false);

// Lenient, as credential files need: either alphabet, padding and line
// breaks ignored. nullopt on any other character.
std::optional<std::string> Base64Decode(std::string_view in);

// Strict standard form: non-empty, a multiple of 4 long, padding only at the
// end (at most two), standard alphabet. nullopt otherwise.
std::optional<std::string> Base64DecodeStrict(std::string_view in);

}  // namespace regfs

#endif  // REGFS_READER_BASE_BASE64_H_
