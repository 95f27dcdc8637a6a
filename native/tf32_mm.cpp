// mace_lp::tf32_mm(x, weight): x @ weight with x rounded to TF32, float32 accumulation and result;
// weight is already TF32 (linears._policy_weights rounds it once at export).
//
// Why: the tf32 policy's TorchScript form (linears.round_to_tf32, then a float32 GEMM) gives
// TF32's numbers but not its speed: the rounding is extra kernels and the GEMM runs without
// tensor cores, so `tf32` was slower than `fp32`. On CUDA this operator lets cuBLAS use TF32
// tensor cores for this one GEMM, whatever the process-wide setting says (TorchScript in
// openmm-torch cannot change it), and restores the setting afterwards; the CPU kernel is the
// emulation, value for value. The backward (dx = dy @ weight^T) is float32, as the emulation's
// autograd has it. A Meta kernel gives shapes to make_fx (compiler="inductor").
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace mace_lp {
namespace {

void check_operands(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(0),
              "mace_lp::tf32_mm: expected x [n, k] and weight [k, m], got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "mace_lp::tf32_mm: TF32 is a float32 format; got ", x.scalar_type(), " and ", weight.scalar_type());
}

// Nearest-even rounding to 11 significant bits, the same operations as linears.round_to_tf32.
at::Tensor round_to_tf32(const at::Tensor& x) {
  auto [mantissa, exponent] = at::frexp(x);
  return at::ldexp(at::round(mantissa * 2048.0) / 2048.0, exponent.to(x.scalar_type()));
}

at::Tensor tf32_mm_cpu(const at::Tensor& x, const at::Tensor& weight) {
  check_operands(x, weight);
  return at::mm(round_to_tf32(x), weight);
}

// The process-wide TF32 switch of CUDA matmuls, set for one call and restored after it.
// allowTF32CuBLAS/setAllowTF32CuBLAS is the one form of this setting that torch 2.9 (string
// names) and 2.11+ (enum names) share; the string form did not build against torch 2.11.
class CudaMatmulTF32 {
 public:
  explicit CudaMatmulTF32(bool allow) : before_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(allow);
  }
  ~CudaMatmulTF32() { at::globalContext().setAllowTF32CuBLAS(before_); }
  CudaMatmulTF32(const CudaMatmulTF32&) = delete;
  CudaMatmulTF32& operator=(const CudaMatmulTF32&) = delete;

 private:
  bool before_;
};

at::Tensor tf32_mm_cuda(const at::Tensor& x, const at::Tensor& weight) {
  check_operands(x, weight);
  CudaMatmulTF32 tf32(true);
  return at::mm(x, weight);
}

at::Tensor tf32_mm_meta(const at::Tensor& x, const at::Tensor& weight) {
  check_operands(x, weight);
  return at::empty({x.size(0), weight.size(1)}, x.options());
}

at::Tensor ieee_mm(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_cuda()) return at::mm(a, b);
  CudaMatmulTF32 ieee(false);
  return at::mm(a, b);
}

class Tf32Mm : public torch::autograd::Function<Tf32Mm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight) {
    ctx->save_for_backward({weight});
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mace_lp::tf32_mm", "").typed<decltype(tf32_mm_cpu)>();
    return op.call(x, weight);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor weight = ctx->get_saved_variables()[0];
    // Forces need dE/dx only; the weights are constants of the exported model.
    return {ieee_mm(grads[0], weight.t()), at::Tensor()};
  }
};

at::Tensor tf32_mm_autograd(const at::Tensor& x, const at::Tensor& weight) {
  return Tf32Mm::apply(x, weight);
}

}  // namespace
}  // namespace mace_lp

TORCH_LIBRARY_IMPL(mace_lp, CPU, m) { m.impl("tf32_mm", &mace_lp::tf32_mm_cpu); }
TORCH_LIBRARY_IMPL(mace_lp, CUDA, m) { m.impl("tf32_mm", &mace_lp::tf32_mm_cuda); }
TORCH_LIBRARY_IMPL(mace_lp, Meta, m) { m.impl("tf32_mm", &mace_lp::tf32_mm_meta); }
TORCH_LIBRARY_IMPL(mace_lp, Autograd, m) { m.impl("tf32_mm", &mace_lp::tf32_mm_autograd); }
