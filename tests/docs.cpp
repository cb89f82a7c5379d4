// The documentation against the program: every subcommand and flag `--help` lists is on docs/cli.md, and every
// relative link of README.md and docs/ leads to a file (and, with '#', to a heading of it).
#include "helpers.h"

#include <catch2/catch.hpp>

#include <regex>
#include <set>

using zoo::test::read_text;
using zoo::test::run_zoo;
namespace fs = std::filesystem;

namespace {

/// `command --help`'s subcommands (the names under "Subcommands:") and flags (every --name).
struct Help {
  std::vector<std::string> subcommands;
  std::set<std::string> flags;
};

Help help_of(const std::string& command) {
  const auto r = run_zoo(command + " --help");
  INFO(command << " --help: " << r.err);
  REQUIRE(r.code == 0);
  Help h;
  std::istringstream lines(r.out);
  bool in_subcommands = false;
  static const std::regex subcommand(R"(^  ([a-z][a-z0-9-]*) )"), flag(R"(--[a-z][a-z0-9-]*)");
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("Subcommands:", 0) == 0)
      in_subcommands = true;
    else if (!line.empty() && line[0] != ' ')
      in_subcommands = false;
    std::smatch m;
    if (in_subcommands && std::regex_search(line, m, subcommand)) h.subcommands.push_back(m[1]);
    // Only the option column (up to the first two spaces after it): the description may mention other flags.
    const auto start = line.find_first_not_of(' ');
    if (start == std::string::npos) continue;
    const std::string option = line.substr(start, line.find("  ", start) - start);
    for (std::sregex_iterator it(option.begin(), option.end(), flag), end; it != end; ++it) h.flags.insert(it->str());
  }
  return h;
}

/// GitHub's anchor of a heading: lower case, punctuation dropped (but '-' and '_'), spaces to '-'. (GitHub keeps
/// non-ASCII letters; the headings here have none but dashes, which it drops.)
std::string slug(const std::string& heading) {
  std::string out;
  for (unsigned char c : heading) {
    if (c < 0x80 && (std::isalnum(c) || c == '-' || c == '_'))
      out += static_cast<char>(std::tolower(c));
    else if (c == ' ')
      out += '-';
  }
  return out;
}

std::set<std::string> anchors(const fs::path& file) {
  std::set<std::string> out;
  std::istringstream lines(read_text(file));
  bool code = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("```", 0) == 0) code = !code;
    if (code || line.rfind('#', 0) != 0) continue;
    const auto text = line.substr(line.find_first_not_of('#'));
    out.insert(slug(text.substr(text.find_first_not_of(' '))));
  }
  return out;
}

std::vector<fs::path> markdown_files() {
  const fs::path root = ZOO_SOURCE_DIR;
  std::vector<fs::path> files{root / "README.md"};
  for (const auto& e : fs::recursive_directory_iterator(root / "docs"))
    if (e.path().extension() == ".md") files.push_back(e.path());
  return files;
}

}  // namespace

TEST_CASE("Docs: every subcommand and flag that --help lists is in docs/cli.md", "[docs][cli]") {
  const std::string cli = read_text(fs::path(ZOO_SOURCE_DIR) / "docs" / "cli.md");
  std::vector<std::string> commands{""};
  size_t checked = 0;
  for (size_t i = 0; i < commands.size(); ++i) {
    const Help h = help_of(commands[i]);
    for (const auto& sub : h.subcommands) {
      const std::string command = commands[i].empty() ? sub : commands[i] + " " + sub;
      commands.push_back(command);
      INFO("subcommand: zoo " << command);
      CHECK(cli.find("zoo " + command) != std::string::npos);
    }
    for (const auto& flag : h.flags) {
      if (flag == "--help") continue;
      INFO("zoo " << commands[i] << " " << flag);
      // An on/off flag's --no- form counts as documented with its --form (docs/cli.md says so once).
      auto documented = [&](const std::string& f) { return std::regex_search(cli, std::regex(f + "([^a-z0-9-]|$)")); };
      CHECK((documented(flag) || (flag.rfind("--no-", 0) == 0 && documented("--" + flag.substr(5)))));
      ++checked;
    }
  }
  CHECK(commands.size() > 15);  // the walk reached the subcommands and the experiments under them
  CHECK(checked > 100);
}

TEST_CASE("Docs: every relative link of README.md and docs/ resolves, anchors included", "[docs]") {
  static const std::regex link(R"(\]\(([^)\s]+)\))");
  size_t checked = 0;
  static const std::regex inline_code("`[^`]*`");
  for (const auto& file : markdown_files()) {
    // The prose only: code (fenced blocks, `spans`) may hold "](" in C++ lambdas.
    std::string text;
    std::istringstream lines(read_text(file));
    bool code = false;
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("```", 0) == 0)
        code = !code;
      else if (!code)
        text += std::regex_replace(line, inline_code, "") + "\n";
    }
    for (std::sregex_iterator it(text.begin(), text.end(), link), end; it != end; ++it) {
      const std::string target = (*it)[1];
      if (target.find("://") != std::string::npos || target.rfind("mailto:", 0) == 0) continue;
      const auto hash = target.find('#');
      const std::string path = target.substr(0, hash),
                        anchor = hash == std::string::npos ? "" : target.substr(hash + 1);
      const fs::path resolved = path.empty() ? file : file.parent_path() / path;
      INFO(file.string() << ": link " << target);
      CHECK(fs::exists(resolved));
      if (!anchor.empty() && fs::exists(resolved) && resolved.extension() == ".md")
        CHECK(anchors(resolved).count(anchor) == 1);
      ++checked;
    }
  }
  CHECK(checked > 30);
}

namespace {
/// The code block right after the line `<!-- test: NAME -->` of a Markdown file.
std::string snippet(const std::string& markdown, const std::string& name) {
  const auto marker = markdown.find("<!-- test: " + name + " -->");
  REQUIRE(marker != std::string::npos);
  const auto open = markdown.find("```", marker);
  const auto body = markdown.find('\n', open) + 1;
  const auto close = markdown.find("\n```", body);
  REQUIRE((open != std::string::npos && close != std::string::npos));
  return markdown.substr(body, close - body + 1);
}
}  // namespace

TEST_CASE("Docs: the Python snippets of docs/interop.md run as written", "[docs][python][cli]") {
  using zoo::test::kPython;
  if (!zoo::test::python_has_torch()) {
    WARN("skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)");
    return;
  }
  REQUIRE(zoo::test::have_fashion_mnist());
  const std::string doc = read_text(fs::path(ZOO_SOURCE_DIR) / "docs" / "interop.md");
  zoo::test::TempDir tmp;
  auto in_tmp = [&](const std::string& command) { return "cd " + tmp.str() + " && " + command; };
  // The zoo commands of the page (fewer images: the snippet does not depend on how well the model learned).
  auto r = run_zoo("train mlp --epochs 1 --limit 500 --no-progress --out " + tmp.str("runs/mlp"));
  REQUIRE(r.code == 0);
  r = run_zoo("export " + tmp.str("runs/mlp") + " --out " + tmp.str("mlp.ts"));
  REQUIRE(r.code == 0);
  std::ofstream(tmp.path() / "export.py") << snippet(doc, "export");
  r = zoo::test::run_command(in_tmp(std::string(kPython) + " export.py"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out,
             Catch::Contains("tensor([") && Catch::Contains("'net.0.weight'") && Catch::Contains("'net.4.bias'"));
  std::ofstream(tmp.path() / "import.py") << snippet(doc, "import");
  r = zoo::test::run_command(in_tmp(std::string(kPython) + " import.py"));
  REQUIRE(r.code == 0);
  r = run_zoo("import " + tmp.str("mine.pt") + " --model mlp --out " + tmp.str("runs/mine"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  r = run_zoo("eval " + tmp.str("runs/mine") + " --limit 100 --json");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(zoo::test::last_line(r.out)).at("items") == 100);
}
