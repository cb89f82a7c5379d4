#include "training/torch_save.h"

#include "training/checkpoint.h"
#include "training/messages.h"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <unordered_map>

namespace zoo::training {

namespace {

/// The storage types torch.save names (torch.FloatStorage, ...) and their dtypes.
const std::map<std::string, torch::ScalarType>& storage_types() {
  static const std::map<std::string, torch::ScalarType> types = {{"torch.DoubleStorage", torch::kFloat64},
                                                                 {"torch.FloatStorage", torch::kFloat32},
                                                                 {"torch.HalfStorage", torch::kFloat16},
                                                                 {"torch.BFloat16Storage", torch::kBFloat16},
                                                                 {"torch.LongStorage", torch::kInt64},
                                                                 {"torch.IntStorage", torch::kInt32},
                                                                 {"torch.ShortStorage", torch::kInt16},
                                                                 {"torch.CharStorage", torch::kInt8},
                                                                 {"torch.ByteStorage", torch::kUInt8},
                                                                 {"torch.BoolStorage", torch::kBool},
                                                                 {"torch.ComplexFloatStorage", torch::kComplexFloat},
                                                                 {"torch.ComplexDoubleStorage", torch::kComplexDouble}};
  return types;
}

constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";

/// A pickled object. Objects live in the machine's arena and refer to each other by pointer, so no object owns
/// another: a deep or cyclic pickle is freed without recursion.
struct Value {
  enum class Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  int64_t i = 0;              ///< Bool, Int
  double f = 0;               ///< Float
  std::string s;              ///< Str, Bytes; Global: "module.name"; Storage: its key
  std::vector<Value*> items;  ///< Tuple, List; Dict: key, value, key, value, ... in insertion order
  torch::Tensor tensor;       ///< Tensor; Storage: its elements as a 1-D tensor
};

std::string kind_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return "bool";
    case Value::Kind::Int:
      return "int";
    case Value::Kind::Float:
      return "float";
    case Value::Kind::Str:
      return "str";
    case Value::Kind::Bytes:
      return "bytes";
    case Value::Kind::Tuple:
      return "tuple";
    case Value::Kind::List:
      return "list";
    case Value::Kind::Dict:
      return "dict";
    case Value::Kind::Global:
      return "global " + v.s;
    case Value::Kind::Storage:
      return "storage";
    case Value::Kind::Tensor:
      return "tensor";
  }
  return "object";
}

class Machine {
 public:
  Machine(const std::string& bytes, const StorageReader& storage, const std::string& what)
      : in_(bytes), storage_(storage), what_(what) {}

  Value* run() {
    for (;;) {
      const auto op = byte();
      if (op == 0x2e) {  // STOP
        if (stack_.size() != 1 || !marks_.empty())
          fail("its pickle ends with " + std::to_string(stack_.size()) + " objects on the stack instead of one");
        return stack_.back();
      }
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw std::runtime_error(what_ + ": " + why); }
  [[noreturn]] void refuse_global(const std::string& name) const {
    throw std::runtime_error(fmt::format(
        "{} holds the global {}, which a state_dict never uses; zoo runs no code from a file and builds only "
        "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and the "
        "torch.*Storage types; save the weights alone: torch.save(model.state_dict(), PATH)",
        what_, name));
  }

  // ---- input --------------------------------------------------------------------------------------------
  const char* take(size_t n) {
    if (n > in_.size() - pos_) fail("its pickle is cut short (truncated or damaged file)");
    const char* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint8_t byte() { return static_cast<uint8_t>(*take(1)); }
  uint64_t little(size_t n) {  // unsigned little-endian integer of n <= 8 bytes
    const auto* p = reinterpret_cast<const uint8_t*>(take(n));
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    return v;
  }
  std::string line() {  // GLOBAL's "module\n" and "name\n"
    const auto end = in_.find('\n', pos_);
    if (end == std::string::npos || end - pos_ > 1000) fail("its pickle has a damaged GLOBAL");
    std::string s = in_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  std::string text(uint64_t n) {
    if (n > in_.size() - pos_) fail("its pickle is cut short (truncated or damaged file)");
    return std::string(take(static_cast<size_t>(n)), static_cast<size_t>(n));
  }

  // ---- objects ------------------------------------------------------------------------------------------
  Value* make(Value::Kind kind) {
    if (arena_.size() >= 16'000'000) fail("its pickle holds more than 16 million objects");
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  Value* make_int(int64_t i) {
    auto* v = make(Value::Kind::Int);
    v->i = i;
    return v;
  }
  Value* make_str(Value::Kind kind, std::string s) {
    auto* v = make(kind);
    v->s = std::move(s);
    return v;
  }
  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back()))
      fail("its pickle takes an object from an empty stack (damaged file)");
    auto* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back()))
      fail("its pickle uses an object of an empty stack (damaged file)");
    return stack_.back();
  }
  std::vector<Value*> pop_to_mark() {
    if (marks_.empty()) fail("its pickle closes a MARK it never opened (damaged file)");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  Value* tuple(std::vector<Value*> items) {
    auto* v = make(Value::Kind::Tuple);
    v->items = std::move(items);
    return v;
  }
  /// A dict key's identity (Python's hash and ==, for the kinds a state_dict or checkpoint uses).
  std::string key_of(const Value& k) const {
    switch (k.kind) {
      case Value::Kind::Str:
        return "s" + k.s;
      case Value::Kind::Int:
      case Value::Kind::Bool:
        return "i" + std::to_string(k.i);  // Python: True == 1
      case Value::Kind::None:
        return "n";
      default:
        fail("its pickle has a dict key of type " + kind_name(k) + ", which a state_dict never uses");
    }
  }
  void set_item(Value* dict, Value* key, Value* value) {
    if (dict->kind != Value::Kind::Dict) fail("its pickle sets an item of a " + kind_name(*dict) + " (damaged file)");
    auto& index = dict_index_[dict];
    const auto [it, added] = index.emplace(key_of(*key), dict->items.size());
    if (added) {
      dict->items.push_back(key);
      dict->items.push_back(value);
    } else {
      dict->items[it->second + 1] = value;
    }
  }
  Value* memo_get(uint64_t id) {
    const auto it = memo_.find(id);
    if (it == memo_.end()) fail("its pickle refers to memo entry " + std::to_string(id) + ", never stored");
    return it->second;
  }
  int64_t int_of(const Value* v, const char* what) const {
    if (v->kind != Value::Kind::Int && v->kind != Value::Kind::Bool)
      fail(std::string("a tensor's ") + what + " is a " + kind_name(*v) + ", not an int");
    return v->i;
  }
  std::vector<int64_t> ints_of(const Value* v, const char* what) const {
    if (v->kind != Value::Kind::Tuple && v->kind != Value::Kind::List)
      fail(std::string("a tensor's ") + what + " is a " + kind_name(*v) + ", not a tuple");
    if (v->items.size() > 64) fail(std::string("a tensor's ") + what + " has more than 64 dimensions");
    std::vector<int64_t> out;
    for (const auto* e : v->items) {
      const auto n = int_of(e, what);
      if (n < 0 || n > (int64_t{1} << 48)) fail(fmt::format("a tensor's {} holds {}", what, n));
      out.push_back(n);
    }
    return out;
  }

  // ---- torch objects ------------------------------------------------------------------------------------
  /// ('storage', torch.FloatStorage, KEY, location, numel): the storage of record data/KEY, one per KEY (tensors
  /// that share a storage in Python share it here: tied weights, views).
  Value* persistent(Value* pid) {
    const auto& t = pid->items;
    if (pid->kind != Value::Kind::Tuple || t.size() != 5 || t[0]->kind != Value::Kind::Str || t[0]->s != "storage" ||
        t[1]->kind != Value::Kind::Global || t[2]->kind != Value::Kind::Str || t[4]->kind != Value::Kind::Int)
      fail("its pickle has a persistent id that is not ('storage', type, key, location, numel)");
    const auto type = storage_types().find(t[1]->s);
    if (type == storage_types().end()) fail("its storage type " + t[1]->s + " is not a storage type");
    const auto& key = t[2]->s;
    if (key.empty() || key.size() > 64 ||
        key.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_") != std::string::npos)
      fail("its pickle names a storage '" + key + "', which is not a record name");
    const int64_t numel = t[4]->i;
    if (numel < 0 || numel > (int64_t{1} << 48)) fail(fmt::format("storage {} has {} elements", key, numel));
    if (auto it = storages_.find(key); it != storages_.end()) {
      if (it->second->tensor.scalar_type() != type->second || it->second->tensor.numel() != numel)
        fail("storage " + key + " is named twice with different types or sizes");
      return it->second;
    }
    const auto element = c10::elementSize(type->second);
    const auto bytes = storage_(key, static_cast<uint64_t>(numel) * element);
    if (bytes.size() != static_cast<uint64_t>(numel) * element)
      fail(fmt::format("storage {} holds {} bytes, but {} elements of {} need {}", key, bytes.size(), numel,
                       c10::toString(type->second), static_cast<uint64_t>(numel) * element));
    auto* v = make_str(Value::Kind::Storage, key);
    v->tensor = torch::empty({numel}, torch::TensorOptions().dtype(type->second));
    if (!bytes.empty()) std::memcpy(v->tensor.data_ptr(), bytes.data(), bytes.size());
    storages_[key] = v;
    return v;
  }

  /// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]): a view of the storage,
  /// refused unless every element it reaches lies inside it.
  Value* rebuild_tensor(const std::vector<Value*>& args) {
    if (args.size() < 4 || args.size() > 7 || args[0]->kind != Value::Kind::Storage)
      fail("its pickle calls _rebuild_tensor_v2 with arguments that are not (storage, offset, size, stride, ...)");
    const auto& storage = args[0]->tensor;
    const auto offset = int_of(args[1], "storage offset");
    const auto size = ints_of(args[2], "size");
    const auto stride = ints_of(args[3], "stride");
    if (size.size() != stride.size())
      fail(fmt::format("a tensor has size {} but stride {}", c10::str(c10::IntArrayRef(size)),
                       c10::str(c10::IntArrayRef(stride))));
    const auto numel = static_cast<uint64_t>(storage.numel());
    if (offset < 0 || static_cast<uint64_t>(offset) > numel)
      fail(fmt::format("a tensor starts at element {} of storage {}, which holds {}", offset, args[0]->s, numel));
    const bool empty = std::find(size.begin(), size.end(), 0) != size.end();
    unsigned __int128 last = static_cast<uint64_t>(offset);  // sizes and strides < 2^48: no overflow in 64 dims
    uint64_t count = 1;
    for (size_t d = 0; d < size.size() && !empty; ++d) {
      count *= static_cast<uint64_t>(size[d]);
      if (count > (uint64_t{1} << 32))
        fail(fmt::format("a tensor of size {} is too large", c10::str(c10::IntArrayRef(size))));
      last += static_cast<unsigned __int128>(size[d] - 1) * static_cast<uint64_t>(stride[d]);
    }
    if (!empty && last >= numel)
      fail(fmt::format(
          "a tensor of size {}, stride {} at offset {} reaches past the end of storage {} ({} elements): the "
          "storage is too small for its view (damaged file)",
          c10::str(c10::IntArrayRef(size)), c10::str(c10::IntArrayRef(stride)), offset, args[0]->s, numel));
    auto* v = make(Value::Kind::Tensor);
    v->tensor = torch::empty({0}, storage.options()).set_(storage.storage(), offset, size, stride);
    return v;
  }

  Value* reduce(Value* callable, Value* args) {
    if (callable->kind != Value::Kind::Global) fail("its pickle calls a " + kind_name(*callable) + " (damaged file)");
    if (args->kind != Value::Kind::Tuple) fail("its pickle calls " + callable->s + " without an argument tuple");
    const auto& name = callable->s;
    if (name == kOrderedDict) {
      if (!args->items.empty()) fail("its pickle builds an OrderedDict from arguments, which torch.save never does");
      return make(Value::Kind::Dict);
    }
    if (name == kRebuildTensor) return rebuild_tensor(args->items);
    if (name == kRebuildParameter) {  // (data, requires_grad, hooks): a Parameter's tensor
      if (args->items.empty() || args->items[0]->kind != Value::Kind::Tensor)
        fail("its pickle calls _rebuild_parameter without a tensor");
      return args->items[0];
    }
    fail("its pickle calls " + name + ", which builds nothing in a state_dict");
  }

  Value* global(const std::string& module, const std::string& name) {
    const auto full = module + "." + name;
    if (full != kOrderedDict && full != kRebuildTensor && full != kRebuildParameter && !storage_types().count(full))
      refuse_global(full);
    return make_str(Value::Kind::Global, full);
  }

  // ---- opcodes (pickletools' names) ---------------------------------------------------------------------
  void step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto proto = byte();
        if (proto < 2 || proto > 5) fail(fmt::format("its pickle is protocol {}; torch.save writes 2", proto));
        return;
      }
      case 0x95:
        take(8);
        return;  // FRAME: a length hint
      case 0x28:
        marks_.push_back(stack_.size());
        return;  // MARK
      case 0x30:
        pop();
        return;  // POP
      case 0x31:
        pop_to_mark();
        return;  // POP_MARK
      case 0x32:
        push(top());
        return;  // DUP
      case 0x4e:
        push(make(Value::Kind::None));
        return;     // NONE
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        auto* v = make(Value::Kind::Bool);
        v->i = op == 0x88;
        push(v);
        return;
      }
      case 0x4a:
        push(make_int(static_cast<int32_t>(little(4))));
        return;  // BININT
      case 0x4b:
        push(make_int(static_cast<int64_t>(little(1))));
        return;  // BININT1
      case 0x4d:
        push(make_int(static_cast<int64_t>(little(2))));
        return;     // BININT2
      case 0x8a: {  // LONG1
        const auto n = byte();
        if (n > 8) fail("its pickle holds an integer of more than 64 bits");
        uint64_t v = little(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        push(make_int(static_cast<int64_t>(v)));
        return;
      }
      case 0x47: {  // BINFLOAT: big-endian
        const auto* p = reinterpret_cast<const uint8_t*>(take(8));
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
        auto* v = make(Value::Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        return;
      }
      case 0x58:
        push(make_str(Value::Kind::Str, text(little(4))));
        return;  // BINUNICODE
      case 0x8c:
        push(make_str(Value::Kind::Str, text(little(1))));
        return;  // SHORT_BINUNICODE
      case 0x8d:
        push(make_str(Value::Kind::Str, text(little(8))));
        return;  // BINUNICODE8
      case 0x42:
        push(make_str(Value::Kind::Bytes, text(little(4))));
        return;  // BINBYTES
      case 0x43:
        push(make_str(Value::Kind::Bytes, text(little(1))));
        return;  // SHORT_BINBYTES
      case 0x8e:
        push(make_str(Value::Kind::Bytes, text(little(8))));
        return;  // BINBYTES8
      case 0x29:
        push(tuple({}));
        return;  // EMPTY_TUPLE
      case 0x74:
        push(tuple(pop_to_mark()));
        return;     // TUPLE
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        std::vector<Value*> items(op - 0x84);
        for (auto k = items.size(); k-- > 0;) items[k] = pop();
        push(tuple(std::move(items)));
        return;
      }
      case 0x5d:
        push(make(Value::Kind::List));
        return;     // EMPTY_LIST
      case 0x6c: {  // LIST
        auto* v = make(Value::Kind::List);
        v->items = pop_to_mark();
        push(v);
        return;
      }
      case 0x61: {  // APPEND
        auto* item = pop();
        auto* list = top();
        if (list->kind != Value::Kind::List) fail("its pickle appends to a " + kind_name(*list) + " (damaged file)");
        list->items.push_back(item);
        return;
      }
      case 0x65: {  // APPENDS
        auto items = pop_to_mark();
        auto* list = top();
        if (list->kind != Value::Kind::List) fail("its pickle appends to a " + kind_name(*list) + " (damaged file)");
        list->items.insert(list->items.end(), items.begin(), items.end());
        return;
      }
      case 0x7d:
        push(make(Value::Kind::Dict));
        return;     // EMPTY_DICT
      case 0x64:    // DICT
      case 0x75: {  // SETITEMS
        auto items = pop_to_mark();
        if (items.size() % 2 != 0) fail("its pickle sets a key without a value (damaged file)");
        auto* dict = op == 0x64 ? make(Value::Kind::Dict) : top();
        for (size_t k = 0; k < items.size(); k += 2) set_item(dict, items[k], items[k + 1]);
        if (op == 0x64) push(dict);
        return;
      }
      case 0x73: {  // SETITEM
        auto* value = pop();
        auto* key = pop();
        set_item(top(), key, value);
        return;
      }
      case 0x63: {  // GLOBAL
        const auto module = line();
        const auto name = line();
        push(global(module, name));
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        auto* name = pop();
        auto* module = pop();
        if (module->kind != Value::Kind::Str || name->kind != Value::Kind::Str)
          fail("its pickle names a global with a non-string (damaged file)");
        push(global(module->s, name->s));
        return;
      }
      case 0x52: {  // REDUCE
        auto* args = pop();
        auto* callable = pop();
        push(reduce(callable, args));
        return;
      }
      case 0x62: {  // BUILD: an OrderedDict's attributes (a state_dict's _metadata) or a tensor's; not needed
        pop();
        const auto* object = top();
        if (object->kind != Value::Kind::Dict && object->kind != Value::Kind::Tensor)
          fail("its pickle sets the state of a " + kind_name(*object) + ", which torch.save never does");
        return;
      }
      case 0x51:
        push(persistent(pop()));
        return;  // BINPERSID
      case 0x71:
        memo_[little(1)] = top();
        return;  // BINPUT
      case 0x72:
        memo_[little(4)] = top();
        return;     // LONG_BINPUT
      case 0x94: {  // MEMOIZE
        auto* v = top();
        memo_[memo_.size()] = v;
        return;
      }
      case 0x68:
        push(memo_get(little(1)));
        return;  // BINGET
      case 0x6a:
        push(memo_get(little(4)));
        return;  // LONG_BINGET
      default:
        fail(
            fmt::format("its pickle uses opcode 0x{:02x} at byte {}, which torch.save does not write (not a "
                        "torch.save file, or damaged)",
                        op, pos_ - 1));
    }
  }

  const std::string& in_;
  size_t pos_ = 0;
  const StorageReader& storage_;
  std::string what_;
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  std::unordered_map<const Value*, std::unordered_map<std::string, size_t>> dict_index_;
  std::map<std::string, Value*> storages_;
};

SavedObject describe(const Value& v, std::string key) {
  SavedObject out;
  out.key = std::move(key);
  out.kind = kind_name(v);
  if (v.kind == Value::Kind::Tensor) {
    out.kind = "tensor " + c10::str(v.tensor.sizes());
    out.tensors.emplace_back("", v.tensor);
  } else if (v.kind == Value::Kind::Dict && !v.items.empty()) {
    bool names_to_tensors = true;
    for (size_t k = 0; k < v.items.size() && names_to_tensors; k += 2)
      names_to_tensors = v.items[k]->kind == Value::Kind::Str && v.items[k + 1]->kind == Value::Kind::Tensor;
    if (names_to_tensors) {
      out.state_dict = true;
      out.kind = fmt::format("state_dict of {} tensors", v.items.size() / 2);
      for (size_t k = 0; k < v.items.size(); k += 2) out.tensors.emplace_back(v.items[k]->s, v.items[k + 1]->tensor);
    } else {
      out.kind = fmt::format("dict of {} entries", v.items.size() / 2);
    }
  }
  return out;
}

}  // namespace

SavedFile parse_torch_save_pickle(const std::string& bytes, const StorageReader& storage, const std::string& what) {
  if (bytes.size() > max_torch_save_pickle)
    throw std::runtime_error(fmt::format("{}: its pickle is {} bytes, more than the {} a state_dict needs", what,
                                         bytes.size(), max_torch_save_pickle));
  Machine machine(bytes, storage, what);
  const Value* root = machine.run();
  SavedFile out;
  out.top = describe(*root, "");
  if (root->kind == Value::Kind::Dict && !out.top.state_dict)
    for (size_t k = 0; k < root->items.size(); k += 2) {
      const auto& key = *root->items[k];
      out.entries.push_back(describe(*root->items[k + 1], key.kind == Value::Kind::Str   ? key.s
                                                          : key.kind == Value::Kind::Int ? std::to_string(key.i)
                                                                                         : kind_name(key)));
    }
  return out;
}

SavedFile read_torch_save(const std::string& path) {
  verify_archive(path);  // libzip checks every entry before miniz (inside LibTorch) reads any
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    auto record = [&](const std::string& name) {
      auto [data, size] = reader.getRecord(name);
      const auto* p = static_cast<const char*>(data.get());
      return std::vector<char>(p, p + size);
    };
    if (reader.hasRecord("byteorder")) {
      const auto order = record("byteorder");
      if (std::string(order.begin(), order.end()) != "little")
        throw std::runtime_error(path +
                                 " was saved on a big-endian machine; load and save it again on a "
                                 "little-endian one (x86, ARM)");
    }
    if (!reader.hasRecord("data.pkl")) throw std::runtime_error(path + " holds no data.pkl: not a torch.save file");
    const auto pickle = record("data.pkl");
    if (pickle.size() > max_torch_save_pickle)
      throw std::runtime_error(fmt::format("{}: its pickle is {} bytes, more than the {} a state_dict needs", path,
                                           pickle.size(), max_torch_save_pickle));
    return parse_torch_save_pickle(
        std::string(pickle.begin(), pickle.end()),
        [&](const std::string& key, uint64_t) {
          if (!reader.hasRecord("data/" + key))
            throw std::runtime_error(path + " names storage " + key + " but holds no record data/" + key +
                                     " (damaged file)");
          return record("data/" + key);
        },
        path);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + " is not a readable torch.save file (" + first_line(e.what_without_backtrace()) +
                             ")");
  }
}

std::vector<std::pair<std::string, torch::Tensor>> saved_state_dict(const SavedFile& file, const std::string& path,
                                                                    const std::string& key, std::string* chosen) {
  auto listing = [&] {
    std::string keys;
    for (const auto& e : file.entries) keys += (keys.empty() ? "" : ", ") + fmt::format("'{}' ({})", e.key, e.kind);
    return keys;
  };
  const SavedObject* found = nullptr;
  if (!key.empty()) {
    if (file.entries.empty())
      throw std::runtime_error(
          fmt::format("--key {}: {} holds a {}, not a dict of entries; leave out --key", key, path, file.top.kind));
    for (const auto& e : file.entries)
      if (e.key == key) found = &e;
    if (!found) throw std::runtime_error(fmt::format("{} has no entry '{}'; it holds {}", path, key, listing()));
    if (!found->state_dict)
      throw std::runtime_error(
          fmt::format("entry '{}' of {} is a {}, not a state_dict; it holds {}", key, path, found->kind, listing()));
  } else if (file.top.state_dict) {
    found = &file.top;
  } else {
    std::vector<const SavedObject*> candidates;
    for (const auto& e : file.entries)
      if (e.state_dict) candidates.push_back(&e);
    if (file.entries.empty())
      throw std::runtime_error(fmt::format(
          "{} holds a {}, not a state_dict; in Python save torch.save(model.state_dict(), PATH)", path, file.top.kind));
    if (candidates.size() != 1)
      throw std::runtime_error(fmt::format("{} holds {}; pick the state_dict with --key NAME", path,
                                           candidates.empty() ? "no state_dict: " + listing() : listing()));
    found = candidates.front();
  }
  if (chosen) *chosen = found->key;
  return found->tensors;
}

}  // namespace zoo::training
