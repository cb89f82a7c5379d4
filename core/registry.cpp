#include "core/registry.h"

#include <mutex>

namespace zoo::detail {

void* registry_slot(const std::string& key, void* (*make)()) {
  static std::mutex mutex;
  static std::map<std::string, void*> slots;
  std::lock_guard<std::mutex> lock(mutex);
  void*& slot = slots[key];
  if (!slot) slot = make();
  return slot;
}

}  // namespace zoo::detail
