// zoo bench: tests/python/bench_twins.py as a child process speaking JSON lines over two pipes.
#include "tools/cli/bench.h"

#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace zoo::cli::bench {

PythonWorker::PythonWorker(const std::string& python, const std::string& script) : python_(python) {
  if (!std::filesystem::exists(script))
    throw std::runtime_error("the Python benchmark script " + script +
                             " is missing; point --python-dir at zoo's "
                             "tests/python, or run with --no-python");
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) throw std::runtime_error("cannot create pipes for Python");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
  posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
  posix_spawn_file_actions_addclose(&actions, to_child[1]);
  posix_spawn_file_actions_addclose(&actions, from_child[0]);
  std::vector<std::string> args{python, "-u", script};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int rc = posix_spawnp(&pid_, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(to_child[0]);
  close(from_child[1]);
  if (rc != 0) {
    close(to_child[1]);
    close(from_child[0]);
    throw std::runtime_error("cannot start " + python + " (" + std::strerror(rc) +
                             "); install python3-torch (/usr/bin/python3) or run with --no-python");
  }
  to_ = fdopen(to_child[1], "w");
  from_ = fdopen(from_child[0], "r");
}

PythonWorker::~PythonWorker() {
  if (to_) {
    std::fputs("{\"op\": \"quit\"}\n", to_);
    std::fclose(to_);
  }
  if (from_) std::fclose(from_);
  if (pid_ > 0) waitpid(pid_, nullptr, 0);
}

json PythonWorker::request(const json& r) {
  const std::string line = r.dump() + "\n";
  if (std::fputs(line.c_str(), to_) < 0 || std::fflush(to_) != 0) dead();
  std::string reply;
  int ch = 0;
  while ((ch = std::fgetc(from_)) != EOF && ch != '\n') reply.push_back(static_cast<char>(ch));
  if (ch == EOF) dead();
  json j;
  try {
    j = json::parse(reply);
  } catch (const json::exception&) {
    throw std::runtime_error("the Python benchmark process replied '" + reply.substr(0, 80) + "', not JSON");
  }
  if (j.contains("error")) throw std::runtime_error(j["error"].get<std::string>());
  return j;
}

void PythonWorker::dead() {
  throw std::runtime_error("the Python benchmark process (" + python_ +
                           ") ended unexpectedly, see its message "
                           "above; it needs python3-torch (import torch), or run with --no-python");
}

}  // namespace zoo::cli::bench
