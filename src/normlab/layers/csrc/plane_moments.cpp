// Per-plane moments of an activation tensor, in one pass (the diagnostics' fused reduction).
//
// For x of shape (N, C, *positions) and every plane (n, c), with L positions and d = x − x₀ the
// values shifted by the plane's first value x₀ (which keeps the sums free of cancellation when
// the mean is large against the spread):
//
//   mean = x₀ + Σd / L,        M2 = Σ(x − mean)² = Σd² − (Σd)² / L,
//
// accumulated in double whatever x's dtype, with no copy of x (the float-to-double conversion
// happens in registers). Both NCHW-contiguous and channels-last layouts are read in place. Any
// NaN or inf in a plane makes its mean or M2 non-finite, so the caller's finite check reads the
// results, not the data.
//
// channel_summary reduces them further over the N inputs, per channel, to what the streaming
// diagnostics merge across batches (σ = sqrt(M2 / L), the plane's population std; sums centred
// around the inputs' mean, two passes over the N values, so no cancellation):
//
//   mean_n μ,  Σ_n (μ − mean μ)²,  mean_n σ,  Σ_n (σ − mean σ)²,  Σ_n M2
//
// from which the power decomposition (PN Eq. 5) and the channel mean and variance follow.
// See normlab/diagnostics/statistics.py.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using torch::Tensor;

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
// Also an AVX2 version of the loops, chosen once at load time where the CPU has it.
#define NORMLAB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NORMLAB_CLONES
#endif

// Planes p in [begin, end) of size values each, stored one after another: Σd and Σd² in double
// with kLanes independent partial sums, so that the additions pipeline and vectorise instead of
// waiting on one another.
constexpr int64_t kLanes = 16;

template <typename scalar_t>
NORMLAB_CLONES void plane_range(const scalar_t* x, int64_t begin, int64_t end, int64_t size,
                                double* mean, double* m2) {
  const int64_t whole = size - size % kLanes;
  for (int64_t p = begin; p < end; ++p) {
    const scalar_t* row = x + p * size;
    const double shift = static_cast<double>(row[0]);
    double s[kLanes] = {}, q[kLanes] = {};
    for (int64_t i = 0; i < whole; i += kLanes) {
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const double d = static_cast<double>(row[i + k]) - shift;
        s[k] += d;
        q[k] += d * d;
      }
    }
    for (int64_t i = whole; i < size; ++i) {
      const double d = static_cast<double>(row[i]) - shift;
      s[0] += d;
      q[0] += d * d;
    }
    double sum = 0.0, squares = 0.0;
    for (int64_t k = 0; k < kLanes; ++k) {
      sum += s[k];
      squares += q[k];
    }
    mean[p] = shift + sum / size;
    m2[p] = std::max(squares - sum * (sum / size), 0.0);
  }
}

// NCHW-contiguous: the planes in parallel chunks.
template <typename scalar_t>
void contiguous_planes(const scalar_t* x, int64_t planes, int64_t size, double* mean,
                       double* m2) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(size, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    plane_range(x, begin, end, size, mean, m2);
  });
}

// Channels last: each position holds the C channels side by side; accumulate blocks of
// channels across the positions of one input.
template <typename scalar_t>
void channels_last_planes(const scalar_t* x, int64_t inputs, int64_t channels, int64_t size,
                          double* mean, double* m2) {
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (channels + kBlock - 1) / kBlock;
  at::parallel_for(0, inputs * blocks, 1, [&](int64_t begin, int64_t end) {
    double shift[kBlock], sum[kBlock], squares[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, first = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, channels - first);
      const scalar_t* base = x + n * size * channels + first;
      for (int64_t c = 0; c < width; ++c) {
        shift[c] = static_cast<double>(base[c]);
        sum[c] = squares[c] = 0.0;
      }
      for (int64_t i = 0; i < size; ++i) {
        const scalar_t* row = base + i * channels;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          const double d = static_cast<double>(row[c]) - shift[c];
          sum[c] += d;
          squares[c] += d * d;
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        const int64_t p = n * channels + first + c;
        mean[p] = shift[c] + sum[c] / size;
        m2[p] = std::max(squares[c] - sum[c] * (sum[c] / size), 0.0);
      }
    }
  });
}

bool channels_last(const Tensor& x) {
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

}  // namespace

// (mean, M2), each (N, C) float64, of the planes of x (N, C, *positions); at least one position.
std::vector<Tensor> plane_moments(const Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "plane_moments: a CPU tensor is needed");
  TORCH_CHECK(input.dim() >= 2, "plane_moments: shape (N, C, *positions) is needed");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "plane_moments: float32 or float64 is needed");
  const int64_t inputs = input.size(0), channels = input.size(1);
  const int64_t size = inputs * channels == 0 ? 0 : input.numel() / (inputs * channels);
  TORCH_CHECK(size > 0, "plane_moments: every plane needs at least one value");
  const bool last = channels_last(input);
  const Tensor x = last ? input : input.contiguous();
  auto options = input.options().dtype(at::kDouble);
  Tensor mean = torch::empty({inputs, channels}, options);
  Tensor m2 = torch::empty({inputs, channels}, options);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_moments", [&] {
    const scalar_t* data = x.data_ptr<scalar_t>();
    if (last) {
      channels_last_planes(data, inputs, channels, size, mean.data_ptr<double>(),
                           m2.data_ptr<double>());
    } else {
      contiguous_planes(data, inputs * channels, size, mean.data_ptr<double>(),
                        m2.data_ptr<double>());
    }
  });
  return {mean, m2};
}

// (5, C) float64 summary of x (N, C, *positions), N ≥ 1, as listed at the top, and whether all
// of it is finite (false when x holds NaN or inf, or its squares overflow).
std::tuple<Tensor, bool> channel_summary(const Tensor& input) {
  const auto moments = plane_moments(input);
  const int64_t inputs = input.size(0), channels = input.size(1);
  const double size = static_cast<double>(input.numel() / (inputs * channels));
  const double* mean = moments[0].data_ptr<double>();
  const double* m2 = moments[1].data_ptr<double>();
  Tensor summary = torch::empty({5, channels}, moments[0].options());
  double* out = summary.data_ptr<double>();
  bool finite = true;
  for (int64_t c = 0; c < channels; ++c) {
    double mu_sum = 0.0, sigma_sum = 0.0, m2_sum = 0.0;
    for (int64_t n = 0; n < inputs; ++n) {
      mu_sum += mean[n * channels + c];
      sigma_sum += std::sqrt(m2[n * channels + c] / size);
      m2_sum += m2[n * channels + c];
    }
    const double mu_mean = mu_sum / inputs, sigma_mean = sigma_sum / inputs;
    double mu_m2 = 0.0, sigma_m2 = 0.0;
    for (int64_t n = 0; n < inputs; ++n) {
      const double dm = mean[n * channels + c] - mu_mean;
      const double ds = std::sqrt(m2[n * channels + c] / size) - sigma_mean;
      mu_m2 += dm * dm;
      sigma_m2 += ds * ds;
    }
    out[c] = mu_mean;
    out[channels + c] = mu_m2;
    out[2 * channels + c] = sigma_mean;
    out[3 * channels + c] = sigma_m2;
    out[4 * channels + c] = m2_sum;
    finite = finite && std::isfinite(mu_m2) && std::isfinite(sigma_m2) && std::isfinite(m2_sum);
  }
  return {summary, finite};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plane_moments", &plane_moments,
        "(mean, M2) in float64 of every (n, c) plane of x, in one pass");
  m.def("channel_summary", &channel_summary,
        "(5, C) float64: per channel, over the inputs, the mean and centred sum of squares of "
        "the planes' means and stds, and the sum of their M2; and whether it is all finite");
}
