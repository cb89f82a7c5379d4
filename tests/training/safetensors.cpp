// safetensors: the writer's bytes by hand, a round trip of every dtype, and every rule of the format enforced by
// the reader (each corruption refused with a message naming it).
#include "training/safetensors.h"
#include "tests/helpers.h"

#include <catch2/catch.hpp>

#include <cstring>

using zoo::training::parse_safetensors;
using zoo::training::serialize_safetensors;

namespace {
/// A file from a header text and data bytes, as a hostile writer would make it.
std::string safetensors_bytes(const std::string& header, const std::string& data, uint64_t length_field = UINT64_MAX) {
  const uint64_t n = length_field == UINT64_MAX ? header.size() : length_field;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}
zoo::training::Safetensors parse(const std::string& bytes) {
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "f.safetensors");
}
}  // namespace

TEST_CASE("safetensors: the writer's layout by hand, and a round trip of every dtype", "[safetensors]") {
  const auto bytes = serialize_safetensors({{"b", torch::tensor({1.0f, 2.0f})}, {"a", torch::tensor({int64_t{7}})}},
                                           {{"zoo_model", "mlp"}});
  // Header length, little-endian, then the JSON padded to a multiple of 8; tensors in name order from offset 0.
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  CHECK(n % 8 == 0);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  CHECK(header["a"] == nlohmann::json({{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {0, 8}}}));
  CHECK(header["b"] == nlohmann::json({{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}));
  CHECK(header["__metadata__"]["zoo_model"] == "mlp");
  REQUIRE(bytes.size() == 8 + n + 16);
  float second = 0;
  std::memcpy(&second, bytes.data() + 8 + n + 8 + 4, 4);
  CHECK(second == 2.0f);

  std::map<std::string, torch::Tensor> all;
  for (auto type : {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64, torch::kInt32,
                    torch::kInt16, torch::kInt8, torch::kUInt8})
    all[c10::toString(type)] = (torch::randn({2, 3}) * 50).to(type);
  all["bool"] = torch::tensor({true, false, true});
  all["empty"] = torch::zeros({0, 4});
  all["scalar"] = torch::tensor(3.5);
  all["strided"] = torch::arange(12).view({3, 4}).t();  // not contiguous: written in its logical order
  const auto back = parse(serialize_safetensors(all));
  REQUIRE(back.tensors.size() == all.size());
  for (const auto& [name, t] : all) {
    INFO(name);
    CHECK(back.tensors.at(name).scalar_type() == t.scalar_type());
    CHECK(back.tensors.at(name).sizes() == t.sizes());
    CHECK(torch::equal(back.tensors.at(name), t));
  }
}

TEST_CASE("safetensors: every broken rule of the format is refused, naming it", "[safetensors]") {
  const std::string f32x2 = std::string(8, '\0');
  auto refused = [](const std::string& bytes, const std::string& expected) {
    INFO("expected: " << expected);
    CHECK_THROWS_WITH(parse(bytes), Catch::Contains(expected) && Catch::StartsWith("f.safetensors: "));
  };
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(parse(safetensors_bytes(ok, f32x2)).tensors.at("w").numel() == 2);
  refused("abc", "too short");
  refused(safetensors_bytes(ok, f32x2, 200'000'000), "above the limit of 100000000 bytes");
  refused(safetensors_bytes(ok, f32x2, 1000), "runs past the end of the file");
  refused(safetensors_bytes("[1,2]", ""), "not a JSON object");
  refused(safetensors_bytes(R"({"w":)", ""), "not valid JSON");
  refused(safetensors_bytes("{\"w\xff\":1}", ""), "not valid JSON");  // not UTF-8
  refused(safetensors_bytes(std::string(300, '[') + std::string(300, ']'), ""), "not a JSON object");
  refused(safetensors_bytes("{\"a\":" + std::string(300, '[') + std::string(300, ']') + "}", ""), "nested more than");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", f32x2), "must be {\"dtype\"");
  refused(safetensors_bytes(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "ab"),
          "dtype \"F8_E4M3\" is not one zoo reads");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2), "whole number >= 0");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", f32x2 + "1234"),
          "hold 12 bytes, but F32 [2] needs 8");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", f32x2), "end before");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"), "run past the data");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", f32x2),
          "overflows");
  refused(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            f32x2),
          "overlaps");
  refused(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", f32x2 + "1234"),
          "a gap of 4 bytes");
  refused(safetensors_bytes(ok, f32x2 + "x"), "1 bytes after the last tensor");
  refused(safetensors_bytes(R"({"w":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x02", 2)),
          "a BOOL byte is 2");
  refused(safetensors_bytes(R"({"__metadata__":{"k":1}})", ""), "must be a string");
  refused(safetensors_bytes(ok, f32x2).substr(0, 20), "runs past the end of the file");  // truncated
}
