#include "training/tensorboard.h"

#include "core/files.h"

#include "datasets/images.h"

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef ZOO_HAVE_PROTOBUF
#include "training/tensorboard.pb.h"
#endif

namespace zoo::training {

namespace {

std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

std::string little_endian(uint64_t v, int bytes) {
  std::string out(static_cast<size_t>(bytes), '\0');
  for (int i = 0; i < bytes; ++i) out[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || !name[0]) return "localhost";
  return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const auto table = crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

#ifdef ZOO_HAVE_PROTOBUF

bool tensorboard_available() { return true; }

EventWriter::EventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create {}: {}", dir, ec.message()));
  path_ = (std::filesystem::path(dir) /
           fmt::format("events.out.tfevents.{}.{}", static_cast<int64_t>(now_seconds()), host_name()))
              .string();
  // A second writer in the same second (a quick resume) must not append to the first one's file.
  for (int n = 1; std::filesystem::exists(path_); ++n)
    path_ = (std::filesystem::path(dir) /
             fmt::format("events.out.tfevents.{}.{}.{}", static_cast<int64_t>(now_seconds()), host_name(), n))
                .string();
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path_, std::strerror(errno)));
  zoo::tb::Event event;
  event.set_wall_time(now_seconds());
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
}

EventWriter::~EventWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventWriter::write_record(const std::string& bytes) {
  const std::string length = little_endian(bytes.size(), 8);
  std::string record = length;
  record += little_endian(masked_crc32c(length.data(), length.size()), 4);
  record += bytes;
  record += little_endian(masked_crc32c(bytes.data(), bytes.size()), 4);
  // One write per record (O_APPEND): a killed process leaves whole records and at most one torn last one.
  write_all(fd_, path_, record);
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  zoo::tb::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(event.SerializeAsString());
}

void EventWriter::add_image(const std::string& tag, const torch::Tensor& image, int64_t step) {
  TORCH_CHECK(image.dim() == 3, "add_image expects [C, H, W], got ", image.sizes());
  zoo::tb::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  auto* img = v->mutable_image();
  img->set_height(static_cast<int32_t>(image.size(1)));
  img->set_width(static_cast<int32_t>(image.size(2)));
  img->set_colorspace(static_cast<int32_t>(image.size(0)));
  img->set_encoded_image_string(datasets::encode_png(image));
  write_record(event.SerializeAsString());
}

void EventWriter::add_text(const std::string& tag, const std::string& text, int64_t step) {
  zoo::tb::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->mutable_metadata()->mutable_plugin_data()->set_plugin_name("text");
  auto* tensor = v->mutable_tensor();
  tensor->set_dtype(7);  // DT_STRING
  tensor->mutable_tensor_shape()->add_dim()->set_size(1);
  tensor->add_string_val(text);
  write_record(event.SerializeAsString());
}

void EventWriter::add_session_start(int64_t step) {
  zoo::tb::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  event.mutable_session_log()->set_status(zoo::tb::SessionLog::START);
  write_record(event.SerializeAsString());
}

void EventWriter::flush() {
  if (fd_ >= 0 && ::fsync(fd_) != 0)
    throw std::runtime_error(fmt::format("cannot write {}: {}", path_, std::strerror(errno)));
}

#else  // built without libprotobuf

bool tensorboard_available() { return false; }

EventWriter::EventWriter(const std::string&) {
  throw std::runtime_error(
      "this zoo was built without TensorBoard support (libprotobuf and protoc were not found): "
      "apt-get install libprotobuf-dev protobuf-compiler (or scripts/setup), then rebuild");
}
EventWriter::~EventWriter() = default;
void EventWriter::write_record(const std::string&) {}
void EventWriter::add_scalar(const std::string&, double, int64_t) {}
void EventWriter::add_image(const std::string&, const torch::Tensor&, int64_t) {}
void EventWriter::add_text(const std::string&, const std::string&, int64_t) {}
void EventWriter::add_session_start(int64_t) {}
void EventWriter::flush() {}

#endif

}  // namespace zoo::training
