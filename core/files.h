// Every file zoo writes goes through these: checked writes (a short write, a failed flush, fsync or close is an
// error naming the file and the reason, e.g. "No space left on device"), and whole files replaced atomically
// (temporary file beside the target, fsync, rename), so a full disk or a kill never leaves half a file under the
// final name. Checkpoints add their multi-file protocol on top (training/checkpoint.h).
#pragma once

#include <functional>
#include <string>

namespace zoo {

/// Writes `bytes` to `path` (created or truncated) and fsyncs it (unless `sync` is false); any failure throws
/// "cannot write PATH: REASON".
void write_bytes(const std::string& path, const std::string& bytes, bool sync = true);

/// Writes a file atomically: `write(tmp_path)` fills PATH.tmp, which is fsynced and renamed over `path`; on any
/// failure the temporary file is removed and `path` is untouched.
void write_file_atomically(const std::string& path, const std::function<void(const std::string& tmp)>& write);
/// write_file_atomically with `text` as the content. `sync` false skips the fsyncs: the file is still whole or
/// absent after a failed write or a kill, but a power cut may lose it (for outputs written by the thousand).
void write_text_atomically(const std::string& path, const std::string& text, bool sync = true);

/// Appends `text` to `path` (created if missing), checked; `sync`: fsync before returning. For logs that grow.
void append_text(const std::string& path, const std::string& text, bool sync);

/// Writes all of `text` to the open descriptor `fd` (retrying short writes), or throws "cannot write PATH: REASON".
void write_all(int fd, const std::string& path, const std::string& text);

/// fsyncs a file or a directory (best effort: a path that cannot be opened is skipped).
void fsync_path(const std::string& path, bool directory);

}  // namespace zoo
