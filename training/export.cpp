#include "training/export.h"

#include "training/checkpoint.h"
#include "training/messages.h"

#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

namespace zoo::training {

namespace {

std::string type_name(const std::string& cpp_name) {
  std::string last = cpp_name.substr(cpp_name.rfind(':') == std::string::npos ? 0 : cpp_name.rfind(':') + 1);
  if (last.size() > 4 && last.compare(last.size() - 4, 4, "Impl") == 0) last.resize(last.size() - 4);
  std::string out;
  for (char c : last) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out.empty() ? "Module" : out;
}

/// The same tree of modules, parameters and buffers (the same tensors, so the tracer finds them as attributes).
void mirror(torch::nn::Module& module, torch::jit::Module& jm, const std::shared_ptr<torch::jit::CompilationUnit>& cu) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) jm.register_parameter(p.key(), p.value(), false);
  for (const auto& b : module.named_buffers(/*recurse=*/false)) jm.register_buffer(b.key(), b.value());
  for (const auto& c : module.named_children()) {
    torch::jit::Module child(c10::QualifiedName("__torch__.zoo." + type_name(c.value()->name())), cu,
                             /*shouldMangle=*/true);
    mirror(*c.value(), child, cu);
    jm.register_module(c.key(), child);
  }
}

c10::IValue to_ivalue(torch::nn::AnyValue&& value, const std::string& model) {
  if (auto* t = value.try_get<torch::Tensor>()) return *t;
  using T2 = std::tuple<torch::Tensor, torch::Tensor>;
  using T3 = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;
  if (auto* t = value.try_get<T2>()) return c10::ivalue::Tuple::create({std::get<0>(*t), std::get<1>(*t)});
  if (auto* t = value.try_get<T3>())
    return c10::ivalue::Tuple::create({std::get<0>(*t), std::get<1>(*t), std::get<2>(*t)});
  throw std::invalid_argument(model + "'s forward returns " + value.type_info().name() +
                              "; export handles a tensor or a tuple of 2 or 3 tensors");
}

std::vector<torch::Tensor> tensors_of(const c10::IValue& v) {
  if (v.isTensor()) return {v.toTensor()};
  std::vector<torch::Tensor> out;
  for (const auto& e : v.toTupleRef().elements()) out.push_back(e.toTensor());
  return out;
}

}  // namespace

namespace {

/// Largest difference between the traced and the C++ outputs, relative to max(1, |C++|); infinity when the
/// traced forward fails or the shapes differ.
double compare(torch::nn::AnyModule& model, torch::jit::Module& traced, const torch::Tensor& input,
               const std::string& name, std::string& failure) {
  torch::manual_seed(0);
  const auto expected = tensors_of(to_ivalue(model.any_forward(input), name));
  std::vector<torch::Tensor> got;
  try {
    torch::manual_seed(0);
    got = tensors_of(traced.forward({input}));
  } catch (const c10::Error& e) {
    failure = last_line(e.what_without_backtrace());
    return INFINITY;
  } catch (const std::exception& e) {  // torch::jit::JITException
    failure = last_line(e.what());
    return INFINITY;
  }
  if (got.size() != expected.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i].sizes() != got[i].sizes()) return INFINITY;
    const auto scale = std::max(1.0, expected[i].abs().max().item<double>());
    worst = std::max(worst,
                     (expected[i].to(torch::kFloat64) - got[i].to(torch::kFloat64)).abs().max().item<double>() / scale);
  }
  return worst;
}

}  // namespace

Exported export_torchscript(torch::nn::AnyModule& model, const torch::Tensor& example, const torch::Tensor& same_shape,
                            const torch::Tensor& other_batch) {
  auto& module = *model.ptr();
  const std::string name = type_name(module.name());
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module top(c10::QualifiedName("__torch__.zoo." + name), cu, /*shouldMangle=*/true);
  mirror(module, top, cu);
  module.eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  auto traced = torch::jit::tracer::trace(
      {example},
      [&](torch::jit::Stack inputs) -> torch::jit::Stack {
        return {to_ivalue(model.any_forward(inputs.at(0).toTensor()), name)};
      },
      [](const torch::autograd::Variable&) { return std::string(); }, /*strict=*/false, /*force_outplace=*/false, &top);
  auto graph = traced.first->graph;
  auto fn =
      top._ivalue()->compilation_unit()->create_function(c10::QualifiedName(*top.type()->name(), "forward"), graph);
  top.type()->addMethod(fn);
  // The traced graph must compute what the C++ forward computes on other data, or tracing missed something.
  std::string failure;
  const double same = compare(model, top, same_shape, name, failure);
  if (!(same <= 1e-4))
    throw std::runtime_error("the traced forward of " + name +
                             " differs from the C++ forward on other input of the "
                             "same shape (" +
                             (failure.empty() ? "relative difference " + std::to_string(same) : failure) +
                             "): its work depends on the data (routing, adaptive steps, loops over values), which a "
                             "trace cannot record, so it cannot be exported as TorchScript");
  failure.clear();
  Exported out{top, compare(model, top, other_batch, name, failure) <= 1e-4};
  return out;
}

std::vector<torch::Tensor> forward_outputs(torch::nn::AnyModule& model, const torch::Tensor& input) {
  model.ptr()->eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  return tensors_of(to_ivalue(model.any_forward(input), type_name(model.ptr()->name())));
}

std::string describe_torch_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[4] = {0, 0, 0, 0};
  in.read(head, 4);
  if (in.gcount() >= 2 && static_cast<unsigned char>(head[0]) == 0x80 && head[1] >= 2 && head[1] <= 5)
    return "a legacy torch.save pickle (PyTorch before 1.6, or _use_new_zipfile_serialization=False)";
  if (!(in.gcount() == 4 && head[0] == 'P' && head[1] == 'K')) return "not a PyTorch file (not a zip archive)";
  std::vector<std::string> names;
  try {
    names = verify_archive(path);
  } catch (const std::exception&) {
    return "a damaged zip archive";
  }
  auto has = [&](const std::string& suffix) {
    return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    });
  };
  auto has_part = [&](const std::string& part) {
    return std::any_of(names.begin(), names.end(),
                       [&](const std::string& n) { return n.find(part) != std::string::npos; });
  };
  if (has("/constants.pkl") || has_part("/code/")) return "TorchScript";
  if (has("/data.pkl")) return "a torch.save pickle";
  return "a zip archive that PyTorch did not write";
}

void save_script_module(const torch::jit::Module& module, const std::string& path,
                        const std::map<std::string, std::string>& extra_files) {
  std::ostringstream buffer;
  try {
    module.save(buffer, torch::jit::ExtraFilesMap(extra_files.begin(), extra_files.end()));
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot write " + path + " (" + first_line(e.what_without_backtrace()) + ")");
  }
  write_text_atomically(path, buffer.str());
}

}  // namespace zoo::training
