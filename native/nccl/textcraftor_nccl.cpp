// The NCCL backend of textcraftor's process groups, as a plugin: c10d's ProcessGroupNCCL lives in libtorch_cuda and
// needs CUDA's and NCCL's headers, which the CPU wheels the shim builds against do not ship. So it is compiled apart
// (scripts/build-nccl-plugin, against a CUDA libtorch) and the shim dlopens it when a group on CUDA asks for NCCL.
//
// One C function: it takes the group's store (a c10d::Store with one reference handed over) and gives back a
// c10d::Backend with one reference, or null and a message. Both sides are built against the same libtorch headers,
// so the objects cross as they are; exceptions do not cross.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstring>
#include <exception>
#include <string>

extern "C" __attribute__((visibility("default"))) void *textcraftor_nccl_backend(
    void *store, int rank, int size, long long timeout_ms, char *error, int error_capacity) {
  auto owned = c10::intrusive_ptr<c10d::Store>::reclaim(static_cast<c10d::Store *>(store));
  try {
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(owned, rank, size, options);
    return static_cast<c10d::Backend *>(backend.release());
  } catch (const std::exception &e) {
    std::string message = e.what();
    // c10's messages carry a C++ backtrace after the first line.
    message = message.substr(0, message.find('\n'));
    std::snprintf(error, static_cast<size_t>(error_capacity), "%s", message.c_str());
    return nullptr;
  }
}

// The NCCL version libtorch_cuda was built with, as "major.minor.patch".
extern "C" __attribute__((visibility("default"))) const char *textcraftor_nccl_version(void) {
  static std::string version = std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." + std::to_string(NCCL_PATCH);
  return version.c_str();
}
