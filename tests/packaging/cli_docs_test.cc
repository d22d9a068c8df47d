// The man page (packaging/regfs.1) and the bash completion
// (packaging/regfs.bash-completion) against the command line itself: every
// option each subcommand's --help lists is described in the man page's
// section for it (or the option groups it takes) and completed, and every
// option the man page describes exists. `regfs --version` names the version
// and the git revision.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/run_command.h"

namespace regfs {
namespace {

using regfs::testing::CommandResult;
using regfs::testing::RunCommand;

std::string ReadSource(const std::string& rel) {
  std::ifstream in(std::string(REGFS_SOURCE_DIR) + "/" + rel);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Options a `--help` lists ("  -f,--foreground ...", "  --creds TEXT ..."),
// -h/--help left out (the man page describes it once).
std::set<std::string> HelpOptions(const std::vector<std::string>& sub) {
  std::vector<std::string> argv = {REGFS_BINARY};
  argv.insert(argv.end(), sub.begin(), sub.end());
  argv.push_back("--help");
  CommandResult r = RunCommand(argv, 30);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::set<std::string> opts;
  std::istringstream in(r.output);
  std::string line;
  static const std::regex kOptLine(R"(^  (-[-A-Za-z0-9,]+))");
  while (std::getline(in, line)) {
    std::smatch m;
    if (!std::regex_search(line, m, kOptLine)) continue;
    std::stringstream names(m[1].str());
    std::string name;
    while (std::getline(names, name, ',')) {
      if (name != "-h" && name != "--help") opts.insert(name);
    }
  }
  return opts;
}

// The names a `--help` lists under "Subcommands:" ("umount, unmount" gives
// umount).
std::vector<std::string> HelpSubcommands(const std::vector<std::string>& sub) {
  std::vector<std::string> argv = {REGFS_BINARY};
  argv.insert(argv.end(), sub.begin(), sub.end());
  argv.push_back("--help");
  CommandResult r = RunCommand(argv, 30);
  std::vector<std::string> subs;
  std::istringstream in(r.output);
  std::string line;
  bool in_subs = false;
  static const std::regex kSubLine(R"(^  ([a-z]+))");
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_subs = true;
      continue;
    }
    std::smatch m;
    if (in_subs && std::regex_search(line, m, kSubLine)) subs.push_back(m[1].str());
  }
  return subs;
}

// The man page's sections (".SS "regfs cache stats ..."" -> "cache stats",
// ".SH REGISTRY OPTIONS" -> "REGISTRY OPTIONS") and the options each one
// describes (the tag line after each .TP).
std::map<std::string, std::set<std::string>> ManSections() {
  std::string text = ReadSource("packaging/regfs.1");
  // Plain text: roff's \- is a hyphen; font changes go.
  text = std::regex_replace(text, std::regex(R"(\\-)"), "-");
  text = std::regex_replace(text, std::regex(R"(\\f[BIRP])"), "");
  std::map<std::string, std::set<std::string>> sections;
  std::string current;
  std::istringstream in(text);
  std::string line;
  bool tag_next = false;
  static const std::regex kSub(R"re(^\.SS "regfs ([a-z]+(?: [a-z]+)?)(?=[ "]))re");
  static const std::regex kOpt(R"((?:^|[\s"])(--?[a-z][a-z0-9-]*))");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_search(line, m, kSub)) {
      current = m[1].str();
      sections[current];
      continue;
    }
    if (line.rfind(".SH ", 0) == 0) {
      current = line.substr(4);
      sections[current];
      continue;
    }
    if (line == ".TP") {
      tag_next = true;
      continue;
    }
    if (tag_next) {
      tag_next = false;
      for (std::sregex_iterator it(line.begin(), line.end(), kOpt), end; it != end; ++it) {
        sections[current].insert((*it)[1].str());
      }
    }
  }
  return sections;
}

struct Command {
  std::vector<std::string> argv;      // {"cache", "stats"}
  std::vector<std::string> sections;  // the man page sections describing its options
};

std::vector<Command> Commands() {
  return {{{"inspect"}, {"inspect", "REGISTRY OPTIONS"}},
          {{"mount"}, {"mount", "REGISTRY OPTIONS", "DAEMON OPTIONS"}},
          {{"store"}, {"store", "REGISTRY OPTIONS", "DAEMON OPTIONS"}},
          {{"umount"}, {"umount"}},
          {{"cache", "stats"}, {"cache stats"}},
          {{"cache", "prune"}, {"cache prune"}}};
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

TEST(ManPageTest, EverySubcommandHasASection) {
  std::map<std::string, std::set<std::string>> man = ManSections();
  std::vector<std::string> top = HelpSubcommands({});
  ASSERT_FALSE(top.empty()) << "no subcommands in regfs --help";
  std::set<std::string> listed;
  for (const std::string& s : top) {
    if (s == "cache") {
      std::vector<std::string> cache = HelpSubcommands({"cache"});
      ASSERT_FALSE(cache.empty());
      for (const std::string& c : cache) listed.insert("cache " + c);
    } else {
      listed.insert(s);
    }
  }
  for (const std::string& s : listed) EXPECT_TRUE(man.count(s)) << "no man section for " << s;
  std::set<std::string> covered;
  for (const Command& c : Commands()) covered.insert(Join(c.argv));
  EXPECT_EQ(covered, listed) << "the test's list of commands is out of date";
}

TEST(ManPageTest, DescribesEveryOptionOfEverySubcommand) {
  std::map<std::string, std::set<std::string>> man = ManSections();
  for (const Command& c : Commands()) {
    SCOPED_TRACE("regfs " + Join(c.argv));
    std::set<std::string> described;
    for (const std::string& s : c.sections) {
      ASSERT_TRUE(man.count(s)) << "no man section " << s;
      described.insert(man[s].begin(), man[s].end());
    }
    std::set<std::string> help = HelpOptions(c.argv);
    for (const std::string& o : help) EXPECT_TRUE(described.count(o)) << o << " not in regfs(1)";
    for (const std::string& o : described) {
      EXPECT_TRUE(help.count(o)) << o << " is in regfs(1) but not in --help";
    }
  }
  EXPECT_TRUE(man["GENERAL OPTIONS"].count("--version"));
  EXPECT_TRUE(man["GENERAL OPTIONS"].count("--help"));
}

TEST(ManPageTest, CompletionKnowsEveryOption) {
  std::string completion = ReadSource("packaging/regfs.bash-completion");
  ASSERT_FALSE(completion.empty());
  std::set<std::string> all;
  for (const Command& c : Commands()) {
    for (const std::string& o : HelpOptions(c.argv)) {
      all.insert(o);
      EXPECT_TRUE(std::regex_search(completion, std::regex("[\" ]" + o + "[\" ]")))
          << o << " (regfs " << Join(c.argv) << ") not completed";
    }
  }
  // The completion's word lists: opts="..." assignments and compgen -W "...".
  static const std::regex kList(R"re((?:opts=|-W )"([^"]*)")re");
  static const std::regex kOpt(R"((?:^|\s)(--?[a-z][a-z0-9-]*))");
  for (std::sregex_iterator l(completion.begin(), completion.end(), kList), lend; l != lend; ++l) {
    std::string list = (*l)[1].str();
    for (std::sregex_iterator it(list.begin(), list.end(), kOpt), end; it != end; ++it) {
      std::string o = (*it)[1].str();
      if (o == "--help" || o == "--version") continue;
      EXPECT_TRUE(all.count(o)) << o << " is completed but no subcommand takes it";
    }
  }
}

TEST(VersionTest, NamesTheVersionAndTheGitRevision) {
  CommandResult r = RunCommand({REGFS_BINARY, "--version"}, 30);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_match(r.output, m, std::regex(R"(regfs (\S+) \(git (\S+)\)\n)")))
      << r.output;
  EXPECT_EQ(m[1].str(), REGFS_PROJECT_VERSION);
  // Built from a git checkout: the revision is HEAD's (the binary is built
  // from the source the test runs against).
  CommandResult head =
      RunCommand({"git", "-C", REGFS_SOURCE_DIR, "rev-parse", "--short=12", "HEAD"}, 30);
  if (head.exit_code != 0) GTEST_SKIP() << "the sources are not a git checkout: " << head.output;
  std::string rev = head.output.substr(0, head.output.find('\n'));
  EXPECT_NE(m[2].str().find(rev), std::string::npos)
      << "regfs --version says " << m[2].str() << ", HEAD is " << rev;
}

}  // namespace
}  // namespace regfs
