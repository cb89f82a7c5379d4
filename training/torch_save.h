// Files written by Python's `torch.save` (the zip format of PyTorch >= 1.6), read without running them.
//
//   NAME/data.pkl     a pickle (protocol 2) of the saved object: an OrderedDict (a state_dict), a dict such as
//                     {"model": state_dict, "optimizer": ..., "epoch": 3}, or a tensor
//   NAME/data/KEY     the raw bytes of each storage, little-endian (NAME/byteorder says so in newer files)
//
// A tensor in the pickle is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
// hooks)`, whose storage is a persistent id ('storage', torch.FloatStorage, KEY, location, numel). Python's
// unpickler runs whatever global a pickle names, so a crafted .pth can run code on torch.load. This reader is a
// small pickle machine that knows the globals a state_dict uses and builds them itself (collections.OrderedDict,
// _rebuild_tensor_v2, _rebuild_parameter, the storage type of every dtype); any other global is refused by name
// before anything is built. LibTorch's own unpickler (torch::jit::pickle_load) cannot be used here: it turns every
// OrderedDict into None (it expects one only as a tensor's empty hook table) and has no hook to restrict globals.
// Opcodes: pickletools' table (Python's Lib/pickletools.py); the format: torch/serialization.py.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace zoo::training {

/// One object of a torch.save file: the file's top-level object, or an entry of a top-level dict.
struct SavedObject {
  std::string key;          ///< its key in the top-level dict ("" for the top-level object)
  std::string kind;         ///< what it is, for messages: "state_dict of 12 tensors", "tensor", "dict", "int", ...
  bool state_dict = false;  ///< a non-empty dict of names -> tensors
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  ///< a state_dict's tensors in file order, or the tensor
};

struct SavedFile {
  SavedObject top;
  std::vector<SavedObject> entries;  ///< the top-level dict's entries in file order (empty for other objects)
};

/// The bytes of storage KEY (the record data/KEY of the archive); `expected` is the size the pickle gives it
/// (the reader may return another: the size is checked after).
using StorageReader = std::function<std::vector<char>(const std::string& key, uint64_t expected)>;

/// The largest data.pkl read (a state_dict of ~500,000 tensors).
constexpr size_t max_torch_save_pickle = 64u << 20;

/// Runs the pickle `bytes` of a torch.save file; `what` names it in errors. Every problem is a
/// std::runtime_error naming it: "WHAT holds the global os.system, ...".
SavedFile parse_torch_save_pickle(const std::string& bytes, const StorageReader& storage, const std::string& what);

/// Reads a torch.save file (zip format) with parse_torch_save_pickle.
SavedFile read_torch_save(const std::string& path);

/// The state_dict a torch.save file holds: the file itself when it is one; with `key`, that entry of a top-level
/// dict; without, the one entry that is a state_dict (a checkpoint such as {"model": sd, "optimizer": ...,
/// "epoch": 3}). Anything else is refused with the file's keys listed. `chosen` gets the entry taken ("" = the file).
std::vector<std::pair<std::string, torch::Tensor>> saved_state_dict(const SavedFile& file, const std::string& path,
                                                                    const std::string& key, std::string* chosen);

}  // namespace zoo::training
