// GroupNorm (LN, IN) followed by relu Proxy Normalization, as one C++ autograd node (CPU).
//
// The same step as normlab/layers/group_norm_pn.py (PN paper Eqs. 3 and 7, φ = relu):
//
//   (weight, bias, c) = fold(γ, β, β̃, γ̃)        per channel, in double
//   u = GN(x)·weight + bias                       ATen's native group_norm kernel
//   z = max(u, c)                                  in place on u
//
// and in backward one pass over the gradient that both masks it (z > c) and sums it per channel
// (c's gradient), ATen's native_group_norm_backward, and the fold's vector-Jacobian product.
// Written in C++ so that the per-layer cost is that of a native node: eager Python spends about
// 1.5 µs per small op and tens of µs per Python autograd node, which dominated small activations.
// The fold is the closed form of threshold_fold.py: μ = γβ̃ + β, s = |γ(1 + γ̃)|, t = μ/s,
// E = μΦ(t) + sϕ(t), Var = E·(μQ(t) − sϕ(t)) + s²Φ(t), a = (Var + ε)^(−1/2), c = −E·a,
// weight = γa, bias = βa + c.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// One channel's fold and the quantities its vector-Jacobian product needs.
struct ChannelFold {
  double weight, bias, shift;          // γa, βa + c, c
  double scale, mean, sign;            // a, E, sign(γ(1 + γ̃))
  double s, cdf, upper, pdf;           // s, Φ(t), Q(t) = 1 − Φ(t) (as erfc), ϕ(t)
};

ChannelFold fold_channel(double gamma, double beta, double proxy_beta, double proxy_gamma,
                         double eps) {
  ChannelFold f{};
  const double signed_s = gamma * (1.0 + proxy_gamma);
  f.sign = signed_s > 0 ? 1.0 : (signed_s < 0 ? -1.0 : 0.0);
  f.s = std::max(std::abs(signed_s), DBL_MIN);
  const double mu = beta + gamma * proxy_beta;
  const double z = mu / f.s * kInvSqrt2;
  const double tail = 0.5 * std::erfc(std::abs(z));  // the smaller of Φ and Q, to full precision
  f.cdf = z < 0 ? tail : 1.0 - tail;
  f.upper = z < 0 ? 1.0 - tail : tail;
  f.pdf = std::exp(-z * z) * kInvSqrt2Pi;
  const double s_pdf = f.s * f.pdf;
  f.mean = mu * f.cdf + s_pdf;
  const double var = std::max((mu * f.upper - s_pdf) * f.mean + f.s * f.s * f.cdf, 0.0);
  f.scale = 1.0 / std::sqrt(var + eps);
  f.shift = -f.mean * f.scale;
  f.weight = gamma * f.scale;
  f.bias = beta * f.scale + f.shift;
  return f;
}

// Gradients of (γ, β, β̃, γ̃) from those of (weight, bias, c); bias carries βa only (c reaches
// the output through the threshold, whose gradient Σ grad arrives as grad_shift).
void fold_channel_vjp(const ChannelFold& f, double gamma, double beta, double proxy_beta,
                      double proxy_gamma, double grad_weight, double grad_bias, double grad_shift,
                      double out[4]) {
  const double grad_scale = grad_weight * gamma + grad_bias * beta;
  const double grad_var = (grad_scale - grad_shift * f.mean) * f.scale * f.scale * f.scale * -0.5;
  const double grad_mean = -grad_shift * f.scale;
  // ∂E/∂μ = Φ, ∂E/∂s = ϕ, ∂Var/∂μ = 2EQ, ∂Var/∂s = 2(sΦ − Eϕ)
  const double grad_mu = grad_mean * f.cdf + 2.0 * grad_var * f.mean * f.upper;
  const double grad_s =
      (grad_mean * f.pdf + 2.0 * grad_var * (f.s * f.cdf - f.mean * f.pdf)) * f.sign;
  out[0] = grad_mu * proxy_beta + grad_s * (1.0 + proxy_gamma) + grad_weight * f.scale;
  out[1] = grad_mu + grad_bias * f.scale;
  out[2] = grad_mu * gamma;
  out[3] = grad_s * gamma;
}

static_assert(sizeof(ChannelFold) == 10 * sizeof(double), "ChannelFold is ten doubles");

// The folds of all channels, from the four contiguous (C,) parameter tensors (float or double),
// as a (C, 10) double tensor that backward reuses (see folds_of).
Tensor fold_all(const Tensor& gamma, const Tensor& beta, const Tensor& proxy_beta,
                const Tensor& proxy_gamma, double eps) {
  const int64_t channels = gamma.numel();
  Tensor store = at::empty({channels, 10}, gamma.options().dtype(at::kDouble));
  auto* folds = reinterpret_cast<ChannelFold*>(store.data_ptr<double>());
  AT_DISPATCH_FLOATING_TYPES(gamma.scalar_type(), "normlab_fold", [&] {
    const scalar_t *g = gamma.data_ptr<scalar_t>(), *b = beta.data_ptr<scalar_t>(),
                   *pb = proxy_beta.data_ptr<scalar_t>(), *pg = proxy_gamma.data_ptr<scalar_t>();
    at::parallel_for(0, channels, 256, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        folds[c] = fold_channel(g[c], b[c], pb[c], pg[c], eps);
      }
    });
  });
  return store;
}

const ChannelFold* folds_of(const Tensor& store) {
  return reinterpret_cast<const ChannelFold*>(store.data_ptr<double>());
}

// out = max(out, c) in place, plane by plane (c per channel); NaN propagates, as in torch.maximum.
template <typename scalar_t>
void threshold_below(scalar_t* out, const scalar_t* shift, int64_t planes, int64_t channels,
                     int64_t plane) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t threshold = shift[p % channels];
      scalar_t* o = out + p * plane;
      for (int64_t i = 0; i < plane; ++i) o[i] = o[i] < threshold ? threshold : o[i];
    }
  });
}

// grad_u = 0 where out <= c (else grad, as threshold_backward), and Σ grad of each (n, c) plane,
// in one pass through memory. Eight running partial sums keep the loop vectorizable without
// reassociating a single sum.
template <typename scalar_t>
void mask_and_sum(const scalar_t* grad, const scalar_t* out, const scalar_t* shift,
                  scalar_t* grad_u, double* plane_sums, int64_t planes, int64_t channels,
                  int64_t plane) {
  constexpr int64_t kLanes = 8;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t threshold = shift[p % channels];
      const scalar_t* g = grad + p * plane;
      const scalar_t* o = out + p * plane;
      scalar_t* gu = grad_u + p * plane;
      scalar_t lanes[kLanes] = {};
      const int64_t whole = plane - plane % kLanes;
      for (int64_t i = 0; i < whole; i += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) {
          lanes[k] += g[i + k];
          gu[i + k] = o[i + k] <= threshold ? scalar_t(0) : g[i + k];
        }
      }
      for (int64_t i = whole; i < plane; ++i) {
        lanes[0] += g[i];
        gu[i] = o[i] <= threshold ? scalar_t(0) : g[i];
      }
      double total = 0.0;
      for (int64_t k = 0; k < kLanes; ++k) total += static_cast<double>(lanes[k]);
      plane_sums[p] = total;
    }
  });
}

class GroupNormThresholdPN : public torch::autograd::Function<GroupNormThresholdPN> {
 public:
  static tensor_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& gamma,
                             const Tensor& beta, const Tensor& proxy_beta,
                             const Tensor& proxy_gamma, int64_t groups, double norm_eps,
                             double eps, bool check_finite) {
    for (const Tensor& t : {x, gamma, beta, proxy_beta, proxy_gamma}) {
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == x.scalar_type(),
                  "normlab's C++ GN+PN kernel takes contiguous CPU tensors of one dtype");
    }
    // positions per (sample, channel) from the spatial sizes, so that an empty batch is fine
    int64_t plane = 1;
    for (int64_t d = 2; d < x.dim(); ++d) plane *= x.size(d);
    const int64_t batch = x.size(0), channels = x.size(1);
    const Tensor store = fold_all(gamma, beta, proxy_beta, proxy_gamma, eps);
    const ChannelFold* folds = folds_of(store);
    Tensor folded = at::empty({3, channels}, x.options());  // rows: weight, bias, c
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normlab_folded", [&] {
      scalar_t* f = folded.data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) {
        f[c] = static_cast<scalar_t>(folds[c].weight);
        f[channels + c] = static_cast<scalar_t>(folds[c].bias);
        f[2 * channels + c] = static_cast<scalar_t>(folds[c].shift);
        finite = finite && std::isfinite(f[2 * channels + c]);
      }
    });
    // c = -E·a is non-finite whenever a parameter is; the caller names them (a ValueError)
    TORCH_CHECK_VALUE(finite || !check_finite, "non-finite Proxy Normalization parameters");
    const Tensor weight = folded[0], bias = folded[1], shift = folded[2];
    auto result = at::native_group_norm(x, weight, bias, batch, channels, plane, groups, norm_eps);
    Tensor out = std::get<0>(result);
    TORCH_CHECK(out.is_contiguous(), "native_group_norm returned a non-contiguous output");
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normlab_threshold_below", [&] {
      threshold_below<scalar_t>(out.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(),
                                batch * channels, channels, plane);
    });
    ctx->save_for_backward({x, std::get<1>(result), std::get<2>(result), weight, out, shift, gamma,
                            beta, proxy_beta, proxy_gamma, store});
    ctx->saved_data["sizes"] = std::vector<int64_t>{batch, channels, plane, groups};
    ctx->mark_non_differentiable({shift});
    return {out, shift};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "GroupNormThresholdPN supports first-order gradients only (backward with "
                "create_graph=True, e.g. for double backward, is not implemented)");
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &weight = saved[3];
    const Tensor &out = saved[4], &shift = saved[5];
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t batch = sizes[0], channels = sizes[1], plane = sizes[2], groups = sizes[3];
    const Tensor grad = grad_outputs[0].contiguous();

    Tensor grad_u = at::empty_like(out);
    Tensor plane_sums = at::empty({batch, channels}, x.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "normlab_mask_and_sum", [&] {
      mask_and_sum<scalar_t>(grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                             shift.data_ptr<scalar_t>(), grad_u.data_ptr<scalar_t>(),
                             plane_sums.data_ptr<double>(), batch * channels, channels, plane);
    });
    auto norm_grads = at::native_group_norm_backward(
        grad_u, x, mean, rstd, weight, batch, channels, plane, groups,
        {ctx->needs_input_grad(0), true, true});

    const Tensor &gamma = saved[6], &beta = saved[7], &proxy_beta = saved[8],
                 &proxy_gamma = saved[9];
    const ChannelFold* folds = folds_of(saved[10]);
    const Tensor grad_weight = std::get<1>(norm_grads).contiguous();
    const Tensor grad_bias = std::get<2>(norm_grads).contiguous();
    Tensor grads = at::empty({4, channels}, gamma.options());  // rows: γ, β, β̃, γ̃
    AT_DISPATCH_FLOATING_TYPES(gamma.scalar_type(), "normlab_fold_vjp", [&] {
      const scalar_t *gw = grad_weight.data_ptr<scalar_t>(), *gb = grad_bias.data_ptr<scalar_t>();
      const double* sums = plane_sums.data_ptr<double>();
      const scalar_t *g = gamma.data_ptr<scalar_t>(), *b = beta.data_ptr<scalar_t>(),
                     *pb = proxy_beta.data_ptr<scalar_t>(), *pg = proxy_gamma.data_ptr<scalar_t>();
      scalar_t* out_grads = grads.data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) {
        double grad_shift = 0.0;  // Σ grad over the batch and positions
        for (int64_t n = 0; n < batch; ++n) grad_shift += sums[n * channels + c];
        double channel[4];
        fold_channel_vjp(folds[c], g[c], b[c], pb[c], pg[c], gw[c], gb[c], grad_shift, channel);
        for (int k = 0; k < 4; ++k) out_grads[k * channels + c] = static_cast<scalar_t>(channel[k]);
      }
    });
    return {std::get<0>(norm_grads), grads[0], grads[1], grads[2], grads[3],
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

tensor_list group_norm_threshold_pn(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    const Tensor& proxy_beta, const Tensor& proxy_gamma,
                                    int64_t groups, double norm_eps, double eps,
                                    bool check_finite) {
  return GroupNormThresholdPN::apply(x, gamma, beta, proxy_beta, proxy_gamma, groups, norm_eps,
                                     eps, check_finite);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_norm_threshold_pn", &group_norm_threshold_pn,
        "GroupNorm then relu Proxy Normalization as one autograd node: returns (z, c); raises "
        "ValueError for non-finite parameters when check_finite");
}
