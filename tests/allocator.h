// What the allocator tests expect in this build. Under AddressSanitizer its runtime serves malloc, so zoo rightly
// reports it ("libasan.so.8"), and it refuses to start with another library put before it with LD_PRELOAD.
#pragma once

#include <filesystem>
#include <string>

namespace zoo::test {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

/// The name zoo's programs give their own malloc here: glibc's, or the ASan runtime's.
inline std::string own_allocator() { return kAddressSanitizer ? "libasan" : "glibc malloc"; }
inline bool is_own_allocator(const std::string& name) { return name.rfind(own_allocator(), 0) == 0; }

/// libjemalloc2's library when a test can put it in front with LD_PRELOAD, else "" (with the reason in `why`).
inline std::string preloadable_jemalloc(std::string& why) {
  const std::string path = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
  if (kAddressSanitizer) {
    why = "jemalloc check skipped: AddressSanitizer refuses an allocator put before it";
    return "";
  }
  if (!std::filesystem::exists(path)) {
    why = "jemalloc check skipped: apt-get install libjemalloc2 (scripts/setup)";
    return "";
  }
  return path;
}

}  // namespace zoo::test
