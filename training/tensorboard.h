// TensorBoard event files, written without TensorFlow: TFRecord framing around Event messages serialised by
// libprotobuf (training/tensorboard.proto, compiled by protoc at build time).
//
//   record := uint64 length | uint32 masked_crc32c(length) | Event bytes | uint32 masked_crc32c(Event bytes)
//   masked_crc32c(x) := ((crc >> 15) | (crc << 17)) + 0xa282ead8, crc = CRC-32C (Castagnoli) of x
//
// The first record is Event{file_version: "brain.Event:2"}; TensorBoard reads RUN/tb/events.out.tfevents.*.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace zoo::training {

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
/// TFRecord's masked CRC: a CRC of data that itself holds CRCs does not look like one.
uint32_t masked_crc32c(const void* data, size_t size);

/// Whether this build of zoo can write event files (it needs libprotobuf and protoc at build time).
bool tensorboard_available();

/// One event file: events.out.tfevents.<seconds>.<host> in `dir` (created). Every add_* appends one record;
/// flush() makes them durable (fsync). Errors name the file and the reason.
class EventWriter {
 public:
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  const std::string& path() const { return path_; }
  void add_scalar(const std::string& tag, double value, int64_t step);
  /// `image` [C, H, W] in [0, 1] (C = 1, 3 or 4), stored as PNG.
  void add_image(const std::string& tag, const torch::Tensor& image, int64_t step);
  /// Text, shown by TensorBoard's text plugin (markdown).
  void add_text(const std::string& tag, const std::string& text, int64_t step);
  /// SessionLog START at `step`: TensorBoard drops older events at steps >= `step` (a resumed run).
  void add_session_start(int64_t step);
  void flush();

 private:
  void write_record(const std::string& bytes);
  std::string path_;
  int fd_ = -1;
};

}  // namespace zoo::training
