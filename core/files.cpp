#include "core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace zoo {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& path, int err) {
  throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(err)));
}

/// Writes, fsyncs when asked, and closes `fd` (in every case).
void write_and_close(int fd, const std::string& path, const std::string& text, bool sync) {
  try {
    write_all(fd, path, text);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (sync && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, err);
  }
  if (::close(fd) != 0 && errno != EINTR) fail(path, errno);
}

}  // namespace

void write_all(int fd, const std::string& path, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(path, n == 0 ? ENOSPC : errno);
    done += static_cast<size_t>(n);
  }
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY | O_CLOEXEC) : (O_RDONLY | O_CLOEXEC));
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_bytes(const std::string& path, const std::string& bytes, bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, errno);
  write_and_close(fd, path, bytes, sync);
}

void append_text(const std::string& path, const std::string& text, bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, errno);
  write_and_close(fd, path, text, sync);
}

namespace {

/// write_file_atomically; `sync` false skips the fsyncs of the file and its directory.
void replace_atomically(const std::string& path, const std::function<void(const std::string&)>& write, bool sync) {
  const fs::path target(path);
  const std::string tmp = path + ".tmp";
  try {
    write(tmp);
    if (!fs::exists(tmp)) throw std::runtime_error("cannot write " + path);
    if (sync) fsync_path(tmp, false);
    fs::rename(tmp, target);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw std::runtime_error(fmt::format("cannot write {}: {}", path, e.code().message()));
  } catch (const std::runtime_error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    // The message names the file the user asked for, not its temporary twin.
    const std::string what = e.what(), prefix = "cannot write " + tmp;
    if (what.rfind(prefix, 0) == 0) throw std::runtime_error("cannot write " + path + what.substr(prefix.size()));
    throw;
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  if (sync) fsync_path(target.parent_path().empty() ? "." : target.parent_path().string(), true);
}

}  // namespace

void write_file_atomically(const std::string& path, const std::function<void(const std::string&)>& write) {
  replace_atomically(path, write, true);
}

void write_text_atomically(const std::string& path, const std::string& text, bool sync) {
  replace_atomically(
      path, [&](const std::string& tmp) { write_bytes(tmp, text, sync); }, sync);
}

}  // namespace zoo
