// Proxy Normalization's activation step after any normalizer, one vectorised pass each way (CPU).
//
// With u = γ·ỹ + β the normalizer's output (its native kernel applies the affine), PN paper Eq. 7
// is, per channel c,
//
//   z = φ(u)·a_c + c_c,   a = (Var + ε)^(−1/2),   c = −E·a,
//   E, Var = moments of φ(U), U ~ N(μ, s²), μ = γβ̃ + β, s = γ(1 + γ̃).
//
// pn_step is the whole step as one autograd node: the moments of every channel (relu in closed
// form; the smooth φ by the trapezoid in z on the nodes normlab/layers/gaussian.py uses, sized
// for |s| = 2, the caller's switch, and on proportionally coarser grids for smaller |s|; see
// Grids), with the 2×2 Jacobian ∂(E, Var)/∂(μ, s) computed in the same
// loop, then the tail in one pass. Backward is one pass that applies φ' and accumulates the two
// per-channel sums S_a = Σ g·φ(u), S_c = Σ g, then a few flops per channel:
//
//   ∂L/∂E = −a·S_c,   ∂L/∂Var = −a³/2·(S_a − E·S_c),   (∂L/∂μ, ∂L/∂s) = Jᵀ(∂L/∂E, ∂L/∂Var),
//   ∂L/∂γ = ∂L/∂μ·β̃ + ∂L/∂s·(1 + γ̃),  ∂L/∂β = ∂L/∂μ,  ∂L/∂β̃ = ∂L/∂μ·γ,  ∂L/∂γ̃ = ∂L/∂s·γ.
//
// scale_shift_act is the tail alone, (u, a, c) -> z with the gradients of u, a and c (S_a, S_c),
// for moments computed elsewhere (closed forms of elu, leaky relu; the split for |s| > 2; the
// reference estimator; a cached inference plan).
//
// Both save one activation-sized tensor, as φ alone does: z where φ' is a function of φ (relu,
// leaky relu, tanh, sigmoid, elu, identity; then φ(u) = (z − c)/a, a > 0), else u (gelu, silu,
// softplus), and recompute φ and φ'. NCHW-contiguous and channels-last tensors are read in
// place. The loops use ATen's Vectorized types, compiled for the CPU capability torch runs with
// (normlab/layers/compiled.py), with φ as torch's own kernels define it (torch's softplus with
// β = 1 and threshold 20, the erf form of gelu).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kLeakySlope = 0.01;  // normlab.layers.activations.LEAKY_RELU_SLOPE
constexpr double kSoftplusThreshold = 20.0;

// ---- φ, as torch defines it, on vectors of float or double ---------------------------------
// value(u) = φ(u); value_slope(u) = (φ(u), φ'(u)); where kSavesOutput, slope_of_value(φ) = φ'.

template <typename V>
V select(const V& mask, const V& if_true, const V& if_false) {
  return V::blendv(if_false, if_true, mask);
}

struct Relu {
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return at::vec::maximum(u, V(0)); }
  template <typename V> static V slope_of_value(V phi) { return select(phi > V(0), V(1), V(0)); }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = value(u);
    slope = slope_of_value(phi);
  }
};

struct LeakyRelu {
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return select(u > V(0), u, u * V(kLeakySlope)); }
  template <typename V> static V slope_of_value(V phi) {
    return select(phi > V(0), V(1), V(kLeakySlope));
  }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = value(u);
    slope = slope_of_value(phi);
  }
};

struct Gelu {  // u·Φ(u), Φ(u) = (1 + erf(u/√2))/2 = erfc(−u/√2)/2
  static constexpr bool kSavesOutput = false;
  // float: ATen's polynomial erf (torch's own gelu kernel); double: erfc, which ATen vectorises
  // (its double erf runs lane by lane, some 3× slower) and which is exact in the lower tail
  template <typename V> static V cdf(V u) {
    if constexpr (std::is_same_v<V, Vec<double>>) {
      return (u * V(-kInvSqrt2)).erfc() * V(0.5);
    } else {
      return (V(1) + (u * V(kInvSqrt2)).erf()) * V(0.5);
    }
  }
  template <typename V> static V value(V u) { return u * cdf(u); }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    const V p = cdf(u);
    phi = u * p;
    slope = at::vec::fmadd(u * V(kInvSqrt2Pi), (u * u * V(-0.5)).exp(), p);
  }
};

struct Silu {  // u·σ(u)
  static constexpr bool kSavesOutput = false;
  template <typename V> static V value(V u) { return u / (V(1) + u.neg().exp()); }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    const V sig = V(1) / (V(1) + u.neg().exp());
    phi = u * sig;
    slope = at::vec::fmadd(phi, V(1) - sig, sig);  // σ + uσ(1 − σ)
  }
};

struct Tanh {
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return u.tanh(); }
  template <typename V> static V slope_of_value(V phi) { return V(1) - phi * phi; }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = value(u);
    slope = slope_of_value(phi);
  }
  // for the moments' nodes: tanh(u) = 1 − 2/(e^{2u} + 1), one exp (Sleef's tanh costs some 2.5
  // exps); its error is absolute, ≤ 3e-16, which sums to the same below the trapezoid's own
  template <typename V> static void node_value_slope(V u, V& phi, V& slope) {
    phi = V(1) - V(2) / ((u + u).exp() + V(1));
    slope = slope_of_value(phi);
  }
};

// φ and φ' at the moments' quadrature nodes: value_slope, or a cheaper form of equal accuracy
// in the sums (tanh's node_value_slope)
template <typename A, typename V>
void node_value_slope(V u, V& phi, V& slope) {
  if constexpr (std::is_same_v<A, Tanh>) {
    A::node_value_slope(u, phi, slope);
  } else {
    A::value_slope(u, phi, slope);
  }
}

struct Sigmoid {
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return V(1) / (V(1) + u.neg().exp()); }
  template <typename V> static V slope_of_value(V phi) { return phi * (V(1) - phi); }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = value(u);
    slope = slope_of_value(phi);
  }
};

struct Elu {  // α = 1
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return select(u > V(0), u, u.expm1()); }
  template <typename V> static V slope_of_value(V phi) {
    return select(phi > V(0), V(1), phi + V(1));
  }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = value(u);
    slope = slope_of_value(phi);
  }
};

struct Softplus {  // log(1 + e^u), u beyond the threshold returned as is (torch's β = 1, 20)
  static constexpr bool kSavesOutput = false;
  template <typename V> static V value(V u) {
    return select(u > V(kSoftplusThreshold), u, u.exp().log1p());
  }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    const V e = u.exp();
    const V above = u > V(kSoftplusThreshold);
    phi = select(above, u, e.log1p());
    slope = select(above, V(1), e / (e + V(1)));
  }
};

struct Identity {
  static constexpr bool kSavesOutput = true;
  template <typename V> static V value(V u) { return u; }
  template <typename V> static V slope_of_value(V) { return V(1); }
  template <typename V> static void value_slope(V u, V& phi, V& slope) {
    phi = u;
    slope = V(1);
  }
};

// Activation ids, in the order of normlab.layers.tails.KERNEL_ACTIVATIONS.
enum ActId : int64_t {
  kRelu, kLeakyRelu, kGelu, kSilu, kTanh, kSigmoid, kElu, kSoftplus, kIdentity, kActCount
};

template <typename F>
void dispatch_act(int64_t act, const F& body) {
  switch (act) {
    case kRelu: return body(Relu{});
    case kLeakyRelu: return body(LeakyRelu{});
    case kGelu: return body(Gelu{});
    case kSilu: return body(Silu{});
    case kTanh: return body(Tanh{});
    case kSigmoid: return body(Sigmoid{});
    case kElu: return body(Elu{});
    case kSoftplus: return body(Softplus{});
    case kIdentity: return body(Identity{});
    default: TORCH_CHECK(false, "normlab's PN tail: unknown activation id ", act);
  }
}

bool saves_output(int64_t act) {
  bool result = false;
  dispatch_act(act, [&](auto a) { result = decltype(a)::kSavesOutput; });
  return result;
}

// ---- layout ----------------------------------------------------------------------------------

// (N, C, *positions): N·C planes of `plane` values (NCHW-contiguous), or N·plane rows of C
// values (channels-last).
struct Layout {
  int64_t batch, channels, plane;
  bool channels_last;
};

Layout layout_of(const Tensor& u) {
  Layout l{u.size(0), u.size(1), 1, false};
  for (int64_t d = 2; d < u.dim(); ++d) l.plane *= u.size(d);
  l.channels_last = !u.is_contiguous() && u.dim() == 4 &&
                    u.is_contiguous(at::MemoryFormat::ChannelsLast);
  return l;
}

int64_t grain(int64_t inner) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1)); }

// ---- the tail: z = φ(u)·a + c, and its backward -----------------------------------------------

// body(i, n) over the vectors of [0, size): the whole ones with n = W, a constant that lets the
// loads and stores drop their count test, then the remainder, if any.
template <int64_t W, typename F>
inline void for_vectors(int64_t size, const F& body) {
  int64_t i = 0;
  for (; i + W <= size; i += W) body(i, W);
  if (i < size) body(i, size - i);
}

template <typename A, typename T>
void tail_forward(const T* u, const T* a, const T* c, T* z, const Layout& l) {
  constexpr int64_t W = Vec<T>::size();
  if (!l.channels_last) {
    at::parallel_for(0, l.batch * l.channels, grain(l.plane), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ch = p % l.channels;
        const Vec<T> av(a[ch]), cv(c[ch]);
        const T* up = u + p * l.plane;
        T* zp = z + p * l.plane;
        for_vectors<W>(l.plane, [&](int64_t i, int64_t n) {
          at::vec::fmadd(A::value(Vec<T>::loadu(up + i, n)), av, cv).store(zp + i, n);
        });
      }
    });
    return;
  }
  at::parallel_for(0, l.batch * l.plane, grain(l.channels), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* ur = u + r * l.channels;
      T* zr = z + r * l.channels;
      for_vectors<W>(l.channels, [&](int64_t ch, int64_t n) {
        const Vec<T> av = Vec<T>::loadu(a + ch, n), cv = Vec<T>::loadu(c + ch, n);
        at::vec::fmadd(A::value(Vec<T>::loadu(ur + ch, n)), av, cv).store(zr + ch, n);
      });
    }
  });
}

// One element block of the backward: grad_u = g·a·φ'(u), and the terms of S_a and S_c.
template <typename A, typename T>
inline void tail_backward_block(const Vec<T>& g, const Vec<T>& saved, const Vec<T>& a,
                                const Vec<T>& c, const Vec<T>& inv_a, Vec<T>& grad_u,
                                Vec<T>& sum_gphi, Vec<T>& sum_g) {
  Vec<T> phi, slope;
  if constexpr (A::kSavesOutput) {
    phi = (saved - c) * inv_a;
    slope = A::slope_of_value(phi);
  } else {
    A::value_slope(saved, phi, slope);
  }
  grad_u = g * a * slope;
  sum_gphi = at::vec::fmadd(g, phi, sum_gphi);
  sum_g = sum_g + g;
}

template <typename T>
double horizontal_sum(const Vec<T>& v) {
  T lanes[Vec<T>::size()];
  v.store(lanes);
  double total = 0.0;
  for (int64_t k = 0; k < Vec<T>::size(); ++k) total += static_cast<double>(lanes[k]);
  return total;
}

// sums: (2, C) double, rows S_a = Σ g·φ(u) and S_c = Σ g.
template <typename A, typename T>
void tail_backward(const T* g, const T* saved, const T* a, const T* c, T* grad_u, double* sums,
                   const Layout& l) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t C = l.channels;
  const int64_t threads = at::get_num_threads();
  std::vector<double> partial(threads * 2 * C, 0.0);  // each thread's S_a, S_c
  std::vector<T> inverse(C);  // 1/a (a > 0: a^2 = 1/(Var + ε))
  for (int64_t ch = 0; ch < C; ++ch) inverse[ch] = T(1) / a[ch];
  if (!l.channels_last) {
    // A channel's vector accumulators carry over the planes of that channel in a thread's
    // chunk (no horizontal sum per plane, which small planes such as 7×7 would pay for at
    // every plane) and are added into double after at most kFlush values.
    constexpr int64_t kFlush = 4096;
    at::parallel_for(0, l.batch * C, grain(l.plane), [&](int64_t begin, int64_t end) {
      double* mine = partial.data() + at::get_thread_num() * 2 * C;
      std::vector<Vec<T>> acc(2 * C, Vec<T>(0));
      std::vector<int64_t> held(C, 0);
      const auto flush = [&](int64_t ch) {
        mine[ch] += horizontal_sum(acc[ch]);
        mine[C + ch] += horizontal_sum(acc[C + ch]);
        acc[ch] = acc[C + ch] = Vec<T>(0);
        held[ch] = 0;
      };
      for (int64_t p = begin, ch = begin % C; p < end; ++p, ch = ch + 1 == C ? 0 : ch + 1) {
        const Vec<T> av(a[ch]), cv(c[ch]), inv(inverse[ch]);
        Vec<T> sum_gphi = acc[ch], sum_g = acc[C + ch], gu;
        const int64_t offset = p * l.plane;
        for_vectors<W>(l.plane, [&](int64_t i, int64_t n) {
          const Vec<T> gv = Vec<T>::loadu(g + offset + i, n);
          const Vec<T> sv = Vec<T>::loadu(saved + offset + i, n);
          tail_backward_block<A, T>(gv, sv, av, cv, inv, gu, sum_gphi, sum_g);
          gu.store(grad_u + offset + i, n);
        });
        acc[ch] = sum_gphi;
        acc[C + ch] = sum_g;
        held[ch] += l.plane;
        if (held[ch] >= kFlush) flush(ch);
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        if (held[ch] > 0) flush(ch);
      }
    });
  } else {
    // channels-last: each thread sums its rows per channel, in T over blocks of rows, then in
    // double
    const int64_t rows = l.batch * l.plane;
    constexpr int64_t kBlock = 128;
    at::parallel_for(0, rows, grain(C), [&](int64_t begin, int64_t end) {
      double* mine = partial.data() + at::get_thread_num() * 2 * C;
      std::vector<T> block(2 * C);
      for (int64_t start = begin; start < end; start += kBlock) {
        std::fill(block.begin(), block.end(), T(0));
        for (int64_t r = start; r < std::min(end, start + kBlock); ++r) {
          const int64_t offset = r * C;
          for_vectors<W>(C, [&](int64_t ch, int64_t n) {
            const Vec<T> av = Vec<T>::loadu(a + ch, n), cv = Vec<T>::loadu(c + ch, n);
            const Vec<T> inv = Vec<T>::loadu(inverse.data() + ch, n);
            Vec<T> sum_gphi = Vec<T>::loadu(block.data() + ch, n);
            Vec<T> sum_g = Vec<T>::loadu(block.data() + C + ch, n), gu;
            tail_backward_block<A, T>(Vec<T>::loadu(g + offset + ch, n),
                                      Vec<T>::loadu(saved + offset + ch, n), av, cv, inv, gu,
                                      sum_gphi, sum_g);
            gu.store(grad_u + offset + ch, n);
            sum_gphi.store(block.data() + ch, n);
            sum_g.store(block.data() + C + ch, n);
          });
        }
        for (int64_t k = 0; k < 2 * C; ++k) mine[k] += static_cast<double>(block[k]);
      }
    });
  }
  std::fill(sums, sums + 2 * C, 0.0);
  for (int64_t t = 0; t < threads; ++t) {
    for (int64_t k = 0; k < 2 * C; ++k) sums[k] += partial[t * 2 * C + k];
  }
}

// ---- the proxy moments and their Jacobian, per channel (double) --------------------------------

// E, Var of φ(U), U ~ N(μ, s²), and J = ∂(E, Var)/∂(μ, s) for signed s.
struct ChannelMoments {
  double mean, var, mean_mu, mean_s, var_mu, var_s;
};

// relu in closed form: E = μΦ + |s|ϕ, Var = E·(μQ − |s|ϕ) + s²Φ at t = μ/|s|, with
// ∂E/∂μ = Φ, ∂E/∂|s| = ϕ, ∂Var/∂μ = 2EQ, ∂Var/∂|s| = 2(|s|Φ − Eϕ) (normlab/layers/gaussian.py).
ChannelMoments relu_moments(double mu, double s) {
  const double sign = s > 0 ? 1.0 : (s < 0 ? -1.0 : 0.0);
  const double scale = std::max(std::abs(s), DBL_MIN);
  const double z = mu / scale * kInvSqrt2;
  const double tail = 0.5 * std::erfc(std::abs(z));  // the smaller of Φ and Q, to full precision
  const double cdf = z < 0 ? tail : 1.0 - tail, upper = z < 0 ? 1.0 - tail : tail;
  const double pdf = std::exp(-z * z) * kInvSqrt2Pi, s_pdf = scale * pdf;
  ChannelMoments m{};
  m.mean = mu * cdf + s_pdf;
  m.var = std::max((mu * upper - s_pdf) * m.mean + scale * scale * cdf, 0.0);
  m.mean_mu = cdf;
  m.mean_s = pdf * sign;
  m.var_mu = 2.0 * m.mean * upper;
  m.var_s = 2.0 * (scale * cdf - m.mean * pdf) * sign;
  return m;
}

// The trapezoid in z on nodes z_k with weights w_k (Σ w = 1), u_k = μ + s·z_k, d = φ − E:
//   E = Σ w φ,  Var = Σ w d²,  ∂E/∂μ = Σ w φ',  ∂E/∂s = Σ w z φ',
//   ∂Var/∂μ = 2 Σ w d φ',  ∂Var/∂s = 2 Σ w z d φ'   (Σ w d = 0 removes E's own dependence),
// for a block of channels at once, one per vector lane (`lanes` of them, the rest padded).
template <typename A>
void trapezoid_moments(const double* mu_in, const double* s_in, int64_t lanes, const double* z,
                       const double* w, int64_t count, Vec<double>* phi, Vec<double>* slope,
                       ChannelMoments* out) {
  using V = Vec<double>;
  const V mu = V::loadu(mu_in, lanes), s = V::loadu(s_in, lanes);
  V mean(0);
  for (int64_t k = 0; k < count; ++k) {
    node_value_slope<A>(at::vec::fmadd(V(z[k]), s, mu), phi[k], slope[k]);
    mean = at::vec::fmadd(V(w[k]), phi[k], mean);
  }
  V var(0), mean_mu(0), mean_s(0), var_mu(0), var_s(0);
  for (int64_t k = 0; k < count; ++k) {
    const V wk(w[k]), wz(w[k] * z[k]), d = phi[k] - mean, dd = d * slope[k];
    var = at::vec::fmadd(wk, d * d, var);
    mean_mu = at::vec::fmadd(wk, slope[k], mean_mu);
    mean_s = at::vec::fmadd(wz, slope[k], mean_s);
    var_mu = at::vec::fmadd(wk, dd, var_mu);
    var_s = at::vec::fmadd(wz, dd, var_s);
  }
  double lane[6][V::size()];
  mean.store(lane[0]);
  var.store(lane[1]);
  mean_mu.store(lane[2]);
  mean_s.store(lane[3]);
  var_mu.store(lane[4]);
  var_s.store(lane[5]);
  for (int64_t i = 0; i < lanes; ++i) {
    out[i] = {lane[0][i], lane[1][i], lane[2][i], lane[3][i], 2.0 * lane[4][i], 2.0 * lane[5][i]};
  }
}

// What backward keeps per channel: a, c, E and J, with μ's and s's factors (β̃, 1 + γ̃, γ).
struct ChannelStep {
  double scale, shift, mean, mean_mu, mean_s, var_mu, var_s, proxy_beta, proxy_std, gamma;
};
static_assert(sizeof(ChannelStep) == 10 * sizeof(double), "ChannelStep is ten doubles");

// The trapezoid's nodes for a channel. The caller's grid (gaussian.py's nodes: K on [−L, L]) is
// sized for |s| = split, the largest scale it serves; the rule converges geometrically in the
// number of nodes, at a rate that falls as |s| grows (φ's curvature in z grows with |s|), so a
// channel with a smaller |s| reaches the same accuracy with fewer. For |s| <= 1 (PN's usual
// range: s = 1 at initialisation) a channel uses M = (K − 1)·(|s| + 1)/(split + 1) intervals,
// rounded up to a multiple of 4 and at least kMinIntervals: measured against a 401-node rule for
// silu, gelu and tanh, the error stays at the reference grid's own (1e-11 relative or less);
// M ∝ |s| alone does not (1e-8 for gelu at |s| = 1), nor does this M beyond |s| = 1 for tanh.
struct Grid {
  const double* z;
  const double* w;
  int64_t count;
};

constexpr int64_t kMinIntervals = 20;

class Grids {
 public:
  Grids(const Tensor& nodes, const Tensor& weights, double split)
      : reference_{nodes.data_ptr<double>(), weights.data_ptr<double>(), nodes.numel()},
        split_(split),
        half_width_(-nodes.data_ptr<double>()[0]),
        coarse_((nodes.numel() - 1 + 3) / 4) {}

  // the index of |s|'s grid (coarse_.size() for the reference grid)
  size_t index(double s) const {
    if (!(std::abs(s) <= 1.0)) return coarse_.size();  // |s| > 1 or NaN: the reference
    const double needed = std::ceil((reference_.count - 1) * (std::abs(s) + 1.0) / (split_ + 1.0));
    const int64_t intervals = std::max<int64_t>(kMinIntervals, 4 * (int64_t)std::ceil(needed / 4));
    if (intervals >= reference_.count - 1) return coarse_.size();
    return intervals / 4;
  }

  void build(size_t i) {  // not thread-safe: before the parallel loop
    if (i >= coarse_.size() || !coarse_[i].first.empty()) return;
    const int64_t intervals = 4 * i;
    auto& [z, w] = coarse_[i];
    z.resize(intervals + 1);
    w.resize(intervals + 1);
    double total = 0.0;
    for (int64_t k = 0; k <= intervals; ++k) {
      z[k] = half_width_ * (2.0 * k / intervals - 1.0);
      w[k] = std::exp(-0.5 * z[k] * z[k]);
      total += w[k];
    }
    for (double& v : w) v /= total;
  }

  Grid operator[](size_t i) const {
    if (i >= coarse_.size()) return reference_;
    const auto& [z, w] = coarse_[i];
    return {z.data(), w.data(), (int64_t)z.size()};
  }

 private:
  Grid reference_;
  double split_, half_width_;
  std::vector<std::pair<std::vector<double>, std::vector<double>>> coarse_;
};

// The steps of all channels, into a (C, 10) double tensor: the moments by blocks of channels
// (one per lane), each block on the finest grid any of its channels needs.
template <typename T>
void channel_steps(int64_t act, const T* g, const T* b, const T* pb, const T* pg,
                   const Tensor& nodes, const Tensor& weights, double split, double eps,
                   int64_t channels, ChannelStep* steps) {
  constexpr int64_t W = Vec<double>::size();
  const int64_t blocks = (channels + W - 1) / W;
  std::vector<double> mu(channels), s(channels);
  for (int64_t ch = 0; ch < channels; ++ch) {
    mu[ch] = static_cast<double>(b[ch]) + static_cast<double>(g[ch]) * pb[ch];
    s[ch] = static_cast<double>(g[ch]) * (1.0 + static_cast<double>(pg[ch]));
  }
  Grids grids(nodes, weights, split);
  std::vector<size_t> grid(blocks, 0);
  if (act != kRelu) {  // relu's moments are in closed form
    for (int64_t ch = 0; ch < channels; ++ch) {
      grid[ch / W] = std::max(grid[ch / W], grids.index(s[ch]));
    }
    for (size_t i : grid) grids.build(i);
  }
  std::vector<ChannelMoments> moments(channels);
  at::parallel_for(0, blocks, 8, [&](int64_t begin, int64_t end) {
    std::vector<Vec<double>> phi(nodes.numel()), slope(nodes.numel());
    dispatch_act(act, [&](auto a) {
      using A = decltype(a);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * W, lanes = std::min(W, channels - first);
        if constexpr (std::is_same_v<A, Relu>) {
          for (int64_t ch = first; ch < first + lanes; ++ch) moments[ch] = relu_moments(mu[ch], s[ch]);
        } else {
          const Grid q = grids[grid[block]];
          trapezoid_moments<A>(mu.data() + first, s.data() + first, lanes, q.z, q.w, q.count,
                               phi.data(), slope.data(), moments.data() + first);
        }
      }
    });
  });
  for (int64_t ch = 0; ch < channels; ++ch) {
    const ChannelMoments& m = moments[ch];
    const double scale = 1.0 / std::sqrt(m.var + eps);
    steps[ch] = {scale,    -m.mean * scale, m.mean, m.mean_mu, m.mean_s, m.var_mu,
                 m.var_s,  static_cast<double>(pb[ch]), 1.0 + static_cast<double>(pg[ch]),
                 static_cast<double>(g[ch])};
  }
}

// Whether every channel's |s| = |γ(1 + γ̃)| is at most split, where the trapezoid is exact (the
// caller's split computes the others). NaN counts as near: its moments are NaN.
bool all_near(const Tensor& gamma, const Tensor& proxy_gamma, double split) {
  bool near = true;
  AT_DISPATCH_FLOATING_TYPES(gamma.scalar_type(), "normlab_pn_near", [&] {
    const scalar_t *g = gamma.data_ptr<scalar_t>(), *pg = proxy_gamma.data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < gamma.numel() && near; ++ch) {
      near = !(std::abs(static_cast<double>(g[ch]) * (1.0 + static_cast<double>(pg[ch]))) > split);
    }
  });
  return near;
}

void check_tail_input(const Tensor& u, std::initializer_list<Tensor> others) {
  TORCH_CHECK(u.device().is_cpu() && u.dim() >= 2, "normlab's PN tail takes (N, C, ...) CPU tensors");
  TORCH_CHECK(u.is_contiguous() || layout_of(u).channels_last,
              "normlab's PN tail takes NCHW-contiguous or channels-last tensors");
  for (const Tensor& t : others) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == u.scalar_type() &&
                    t.numel() == u.size(1),
                "normlab's PN tail takes contiguous per-channel CPU tensors of u's dtype");
  }
}

// The output (and grad_u) in u's layout.
Tensor empty_like_layout(const Tensor& u) {
  return at::empty_like(u, layout_of(u).channels_last ? at::MemoryFormat::ChannelsLast
                                                      : at::MemoryFormat::Contiguous);
}

// z = φ(u)·a + c into a new tensor, or into u itself when `in_place`.
Tensor run_tail(const Tensor& u, const Tensor& scale, const Tensor& shift, int64_t act,
                bool in_place = false) {
  Tensor z = in_place ? u : empty_like_layout(u);
  const Layout l = layout_of(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "normlab_pn_tail", [&] {
    dispatch_act(act, [&](auto a) {
      tail_forward<decltype(a), scalar_t>(u.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                          shift.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), l);
    });
  });
  return z;
}

// grad_u and the (2, C) double sums S_a, S_c.
std::pair<Tensor, Tensor> run_tail_backward(const Tensor& grad_in, const Tensor& saved,
                                            const Tensor& scale, const Tensor& shift,
                                            int64_t act) {
  const Layout l = layout_of(saved);
  const Tensor grad = l.channels_last ? grad_in.contiguous(at::MemoryFormat::ChannelsLast)
                                      : grad_in.contiguous();
  Tensor grad_u = empty_like_layout(saved);
  Tensor sums = at::empty({2, l.channels}, saved.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(saved.scalar_type(), "normlab_pn_tail_backward", [&] {
    dispatch_act(act, [&](auto a) {
      tail_backward<decltype(a), scalar_t>(grad.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>(),
                                           scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(),
                                           grad_u.data_ptr<scalar_t>(), sums.data_ptr<double>(),
                                           l);
    });
  });
  return {grad_u, sums};
}

void check_first_order(const char* name) {
  TORCH_CHECK(!at::GradMode::is_enabled(), name,
              " supports first-order gradients only (backward with create_graph=True, e.g. for "
              "double backward, is not implemented)");
}

// ---- the nodes ---------------------------------------------------------------------------------

class ScaleShiftAct : public torch::autograd::Function<ScaleShiftAct> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& u, const Tensor& scale,
                        const Tensor& shift, int64_t act) {
    check_tail_input(u, {scale, shift});
    Tensor z = run_tail(u, scale, shift, act);
    ctx->save_for_backward({saves_output(act) ? z : u, scale, shift});
    ctx->saved_data["act"] = act;
    return z;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    check_first_order("normlab's ScaleShiftAct");
    const auto saved = ctx->get_saved_variables();
    auto [grad_u, sums] =
        run_tail_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["act"].toInt());
    const auto dtype = saved[1].scalar_type();
    return {grad_u, sums[0].to(dtype), sums[1].to(dtype), Tensor()};
  }
};

class ProxyNormStep : public torch::autograd::Function<ProxyNormStep> {
 public:
  // returns {z, a}: a, the per-channel scale, is an output of its own (differentiable) for
  // models that read it (EfficientNet's squeeze-excite divides its pooled input by a)
  static tensor_list forward(AutogradContext* ctx, const Tensor& u, const Tensor& gamma,
                             const Tensor& beta, const Tensor& proxy_beta,
                             const Tensor& proxy_gamma, int64_t act, const Tensor& nodes,
                             const Tensor& weights, double split, double eps,
                             bool check_finite, bool inplace) {
    check_tail_input(u, {gamma, beta, proxy_beta, proxy_gamma});
    const int64_t channels = u.size(1);
    Tensor store = at::empty({channels, 10}, gamma.options().dtype(at::kDouble));
    auto* steps = reinterpret_cast<ChannelStep*>(store.data_ptr<double>());
    Tensor scale = at::empty({channels}, gamma.options()), shift = at::empty_like(scale);
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "normlab_pn_step", [&] {
      channel_steps<scalar_t>(act, gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                                     proxy_beta.data_ptr<scalar_t>(),
                                     proxy_gamma.data_ptr<scalar_t>(), nodes, weights, split, eps,
                              channels, steps);
      scalar_t *a = scale.data_ptr<scalar_t>(), *c = shift.data_ptr<scalar_t>();
      for (int64_t ch = 0; ch < channels; ++ch) {
        a[ch] = static_cast<scalar_t>(steps[ch].scale);
        c[ch] = static_cast<scalar_t>(steps[ch].shift);
        finite = finite && std::isfinite(c[ch]) && std::isfinite(a[ch]);
      }
    });
    // c = −E·a is non-finite whenever a parameter is; the caller names them (a ValueError)
    TORCH_CHECK_VALUE(finite || !check_finite, "non-finite Proxy Normalization parameters");
    // where backward keeps z, z may take u's place (u is then a fresh normalizer output that
    // nothing else reads); where it keeps u, z is new
    const bool in_place = inplace && saves_output(act);
    Tensor z = run_tail(u, scale, shift, act, in_place);
    if (in_place) ctx->mark_dirty({z});
    ctx->save_for_backward({saves_output(act) ? z : u, scale, shift, store});
    ctx->saved_data["act"] = act;
    return {z, scale};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    check_first_order("normlab's ProxyNormStep");
    // a's own gradient adds to Σ g·φ(u), z's gradient with respect to a
    const Tensor grad_scale =
        grads[1].defined() ? grads[1].to(at::kDouble).contiguous() : Tensor();
    const double* ga = grad_scale.defined() ? grad_scale.data_ptr<double>() : nullptr;
    const auto saved = ctx->get_saved_variables();
    const Tensor &scale = saved[1], &shift = saved[2];
    const Tensor grad_z = grads[0].defined() ? grads[0] : at::zeros_like(saved[0]);
    auto [grad_u, sums] =
        run_tail_backward(grad_z, saved[0], scale, shift, ctx->saved_data["act"].toInt());
    const int64_t channels = scale.numel();
    const auto* steps = reinterpret_cast<const ChannelStep*>(saved[3].data_ptr<double>());
    const double* s = sums.data_ptr<double>();
    Tensor out = at::empty({4, channels}, scale.options().dtype(at::kDouble));  // γ, β, β̃, γ̃
    double* o = out.data_ptr<double>();
    for (int64_t ch = 0; ch < channels; ++ch) {
      const ChannelStep& st = steps[ch];
      const double s_a = s[ch] + (ga ? ga[ch] : 0.0), s_c = s[channels + ch];
      const double grad_mean = -st.scale * s_c;
      const double grad_var = -0.5 * st.scale * st.scale * st.scale * (s_a - st.mean * s_c);
      const double grad_mu = st.mean_mu * grad_mean + st.var_mu * grad_var;
      const double grad_s = st.mean_s * grad_mean + st.var_s * grad_var;
      o[ch] = grad_mu * st.proxy_beta + grad_s * st.proxy_std;
      o[channels + ch] = grad_mu;
      o[2 * channels + ch] = grad_mu * st.gamma;
      o[3 * channels + ch] = grad_s * st.gamma;
    }
    out = out.to(scale.scalar_type());
    return {grad_u,   out[0],   out[1],   out[2],   out[3],  Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor scale_shift_act(const Tensor& u, const Tensor& scale, const Tensor& shift, int64_t act) {
  return ScaleShiftAct::apply(u, scale, shift, act);
}

tensor_list proxy_norm_step(const Tensor& u, const Tensor& gamma, const Tensor& beta,
                            const Tensor& proxy_beta, const Tensor& proxy_gamma, int64_t act,
                            const Tensor& nodes, const Tensor& weights, double split, double eps,
                            bool check_finite, bool inplace) {
  check_tail_input(u, {gamma, beta, proxy_beta, proxy_gamma});
  if (act != kRelu && !all_near(gamma, proxy_gamma, split)) return {};  // relu: closed form
  return ProxyNormStep::apply(u, gamma, beta, proxy_beta, proxy_gamma, act, nodes, weights, split,
                              eps, check_finite, inplace);
}

// The per-channel steps as a (C, 10) double tensor (a, c, E, ∂E/∂μ, ∂E/∂s, ∂Var/∂μ, ∂Var/∂s,
// β̃, 1 + γ̃, γ): what proxy_norm_step computes before its tail, for tests.
Tensor channel_step_table(const Tensor& gamma, const Tensor& beta, const Tensor& proxy_beta,
                          const Tensor& proxy_gamma, int64_t act, const Tensor& nodes,
                          const Tensor& weights, double split, double eps) {
  const int64_t channels = gamma.numel();
  Tensor store = at::empty({channels, 10}, gamma.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(gamma.scalar_type(), "normlab_pn_table", [&] {
    channel_steps<scalar_t>(act, gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                            proxy_beta.data_ptr<scalar_t>(), proxy_gamma.data_ptr<scalar_t>(),
                            nodes, weights, split, eps, channels,
                            reinterpret_cast<ChannelStep*>(store.data_ptr<double>()));
  });
  return store;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scale_shift_act", &scale_shift_act,
        "φ(u)·a + c with per-channel a, c, as one autograd node (gradients of u, a, c)");
  m.def("channel_step_table", &channel_step_table,
        "proxy_norm_step's per-channel table (a, c, E, ∂E/∂μ, ∂E/∂s, ∂Var/∂μ, ∂Var/∂s, β̃, 1 + γ̃, "
        "γ) as a (C, 10) double tensor");
  m.def("proxy_norm_step", &proxy_norm_step,
        "PN's activation step from u = γỹ + β and (γ, β, β̃, γ̃) as one autograd node: returns "
        "[z, a] (a the per-channel scale, differentiable), or [] when some |γ(1 + γ̃)| exceeds "
        "split; raises ValueError for non-finite parameters when check_finite; with inplace, z "
        "overwrites u where backward keeps z",
        py::arg("u"), py::arg("gamma"), py::arg("beta"), py::arg("proxy_beta"),
        py::arg("proxy_gamma"), py::arg("act"), py::arg("nodes"), py::arg("weights"),
        py::arg("split"), py::arg("eps"), py::arg("check_finite"), py::arg("inplace") = false);
}
