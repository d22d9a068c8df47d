#include "fs/options.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "reader/base/file_util.h"

namespace regfs {

Result<uint64_t> ParseSize(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    return Status::InvalidArgument("not a size: '" + s + "'");
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (unit.size() == 2 && unit[1] == 'I') unit.pop_back();
  double mult = 1;
  if (unit.empty()) {
  } else if (unit == "K") {
    mult = 1024.0;
  } else if (unit == "M") {
    mult = 1024.0 * 1024;
  } else if (unit == "G") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "T") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return Status::InvalidArgument("unknown size unit in '" + s + "' (use K, M, G or T)");
  }
  if (!(v >= 0) || std::isinf(v)) return Status::InvalidArgument("not a size: '" + s + "'");
  return static_cast<uint64_t>(v * mult);
}

Result<std::string> ReadCertDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return Status::NotFound("certificate directory " + dir + ": " + ec.message());
  std::vector<std::filesystem::path> files;
  for (const auto& e : it) {
    if (e.path().extension() == ".crt") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string pem;
  for (const auto& f : files) {
    ASSIGN_OR_RETURN(std::string crt, ReadFileToString(f.string()));
    pem += crt + "\n";
  }
  return pem;
}

Result<RegistryClientOptions> MakeClientOptions(const CommonOptions& o,
                                                const std::string& registry) {
  RegistryClientOptions c;
  c.tls_verify = o.tls_verify;
  if (!o.cert_dir.empty()) {
    ASSIGN_OR_RETURN(c.extra_ca_pem, ReadCertDir(o.cert_dir));
  } else if (const std::string d = "/etc/containers/certs.d/" + registry;
             registry.find('/') == std::string::npos && std::filesystem::is_directory(d)) {
    Result<std::string> pem = ReadCertDir(d);
    if (pem.ok()) c.extra_ca_pem = *pem;
  }
  c.credentials.authfile = o.authfile;
  if (!o.creds.empty()) {
    ASSIGN_OR_RETURN(Credentials cr, ParseCredsFlag(o.creds));
    c.credentials.explicit_creds = cr;
  }
  if (o.retry_timeout_s > 0) {
    c.retry.total_budget =
        std::chrono::milliseconds(static_cast<int64_t>(o.retry_timeout_s * 1000));
  }
  return c;
}

}  // namespace regfs
