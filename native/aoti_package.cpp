// torch.classes.mace_lp.AOTIPackage: an AOTInductor package (.pt2 of
// torch._inductor.aoti_compile_and_package) callable from TorchScript.
//
// Why: openmm-torch runs TorchScript from C++, with no Python, so Inductor-fused code cannot be
// reached through torch.compile; a TorchScript module holding this object runs the compiled
// package instead, on the current CUDA stream, so inside openmm-torch's CUDA graph. The package
// bytes live in the object (and are pickled with it: torch.jit.save makes a self-contained
// file); the loader is created lazily, once per device index, because openmm-torch loads the
// module before it knows the device it runs on.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/custom_class.h>
#include <torch/library.h>

namespace mace_lp {
namespace {

using Loader = torch::inductor::AOTIModelPackageLoader;

at::Tensor checked_bytes(const at::Tensor& bytes) {
  TORCH_CHECK(bytes.scalar_type() == at::kByte && bytes.dim() == 1,
              "mace_lp.AOTIPackage: package_bytes must be a 1-D uint8 tensor holding a .pt2 file, got ",
              bytes.scalar_type(), " of shape ", bytes.sizes());
  TORCH_CHECK(bytes.numel() > 0, "mace_lp.AOTIPackage: package_bytes is empty");
  // Our own contiguous CPU copy: the caller's buffer (e.g. torch.frombuffer) may change or go away.
  return bytes.to(at::kCPU).contiguous().clone();
}

// A temporary .pt2 holding the bytes, removed when this goes out of scope.
class TemporaryPackageFile {
 public:
  explicit TemporaryPackageFile(const at::Tensor& bytes) {
    const char* tmpdir = std::getenv("TMPDIR");
    path_ = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/mace_lp_aoti_XXXXXX.pt2";
    int fd = mkstemps(path_.data(), 4);
    TORCH_CHECK(fd >= 0, "mace_lp.AOTIPackage: cannot create a temporary file ", path_, ": ", std::strerror(errno));
    const auto* data = static_cast<const char*>(bytes.const_data_ptr());
    size_t left = static_cast<size_t>(bytes.numel());
    while (left > 0) {
      ssize_t written = ::write(fd, data, left);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) {
        const std::string reason = std::strerror(errno);
        ::close(fd);
        ::unlink(path_.c_str());
        TORCH_CHECK(false, "mace_lp.AOTIPackage: cannot write the temporary file ", path_, ": ", reason);
      }
      data += written;
      left -= static_cast<size_t>(written);
    }
    ::close(fd);
  }
  ~TemporaryPackageFile() { ::unlink(path_.c_str()); }
  TemporaryPackageFile(const TemporaryPackageFile&) = delete;
  TemporaryPackageFile& operator=(const TemporaryPackageFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

class AOTIPackage : public torch::CustomClassHolder {
 public:
  explicit AOTIPackage(const at::Tensor& package_bytes) : bytes_(checked_bytes(package_bytes)) {}

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) {
    TORCH_CHECK(!inputs.empty(), "mace_lp.AOTIPackage.run: no inputs (the device is taken from the first one)");
    const c10::Device device = inputs[0].device();
    const c10::DeviceIndex index = device.is_cuda() ? device.index() : -1;
    // A null stream handle: the current CUDA stream, the one a CUDA-graph capture records.
    return loader(index).run(inputs, nullptr);
  }

  int64_t num_bytes() const { return bytes_.numel(); }
  const at::Tensor& bytes() const { return bytes_; }

 private:
  Loader& loader(c10::DeviceIndex index) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = loaders_.find(index);
    if (found != loaders_.end()) return *found->second;
    // The loader extracts the package into a directory of its own on construction (removed by
    // its destructor), so our file is only needed while it is constructed.
    TemporaryPackageFile file(bytes_);
    std::unique_ptr<Loader> created;
    try {
      created = std::make_unique<Loader>(file.path(), "model", false, 1, index);
    } catch (const std::exception& error) {
      TORCH_CHECK(false, "mace_lp.AOTIPackage: loading the AOTInductor package (", bytes_.numel(),
                  " bytes, written to ", file.path(), ") for device index ", static_cast<int>(index),
                  " failed: ", error.what());
    }
    return *loaders_.emplace(index, std::move(created)).first->second;
  }

  at::Tensor bytes_;
  std::mutex mutex_;
  std::map<c10::DeviceIndex, std::unique_ptr<Loader>> loaders_;
};

}  // namespace mace_lp

TORCH_LIBRARY_FRAGMENT(mace_lp, m) {
  m.class_<mace_lp::AOTIPackage>("AOTIPackage")
      .def(torch::init<at::Tensor>())
      .def("run", &mace_lp::AOTIPackage::run)
      .def("num_bytes", &mace_lp::AOTIPackage::num_bytes)
      // Pickled as its bytes: a torch.jit.save'd module carries the package; loaders are made on first run.
      .def_pickle([](const c10::intrusive_ptr<mace_lp::AOTIPackage>& self) -> at::Tensor { return self->bytes(); },
                  [](at::Tensor state) { return c10::make_intrusive<mace_lp::AOTIPackage>(state); });
}
