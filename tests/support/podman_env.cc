#include "tests/support/podman_env.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

namespace regfs::testing {

std::string ShellQuote(const std::string& text) {
  std::string q = "'";
  for (char c : text) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q.push_back(c);
    }
  }
  return q + "'";
}

std::string ReadHostFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<TarEntry> HostCatEntries() {
  std::vector<TarEntry> e;
  for (const char* d : {"bin", "lib", "lib/x86_64-linux-gnu", "lib64", "etc"}) {
    e.push_back(TarEntry::Dir(d));
  }
  for (const char* f :
       {"bin/cat", "lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"}) {
    e.push_back(TarEntry::File(f, ReadHostFile(std::string("/") + f), 0755));
  }
  return e;
}

bool HavePodman() {
  return RunShell("command -v podman && command -v /usr/sbin/runc").exit_code == 0;
}

PodmanEnv::PodmanEnv(std::string dir, const std::string& store_mountpoint) : dir_(std::move(dir)) {
  mkdir(dir_.c_str(), 0700);
  std::ofstream(dir_ + "/storage.conf")
      << "[storage]\n"
      << "driver = \"overlay\"\n"
      << "graphroot = \"" << dir_ << "/graph\"\n"
      << "runroot = \"" << dir_ << "/run\"\n"
      << "[storage.options]\n"
      << (store_mountpoint.empty()
              ? ""
              : "additionallayerstores = [\"" + store_mountpoint + ":ref\"]\n");
  std::ofstream(dir_ + "/containers.conf")
      << "[containers]\n"
      << "default_ulimits = []\n"
      << "[engine]\n"
      << "cgroup_manager = \"cgroupfs\"\n"
      << "events_logger = \"file\"\n"
      << "events_logfile_path = \"" << dir_ << "/events.log\"\n"
      << "tmp_dir = \"" << dir_ << "/tmp\"\n";
  std::ofstream(dir_ + "/registries.conf") << "unqualified-search-registries = []\n";
}

PodmanEnv::~PodmanEnv() {
  Run("rm -a -f");
  Run("rmi -a -f");
  RunShell("umount " + ShellQuote(dir_ + "/graph/overlay") + " 2>/dev/null");
}

CommandResult PodmanEnv::Run(const std::string& args, int timeout_s) const {
  return RunShell("CONTAINERS_STORAGE_CONF=" + ShellQuote(dir_ + "/storage.conf") +
                      " CONTAINERS_CONF=" + ShellQuote(dir_ + "/containers.conf") +
                      " CONTAINERS_REGISTRIES_CONF=" + ShellQuote(dir_ + "/registries.conf") +
                      " podman " + args,
                  timeout_s);
}

}  // namespace regfs::testing
