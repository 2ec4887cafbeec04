// align's kernels for one decode step of the generation engine, for bf16 tensors on CPUs with AVX-512.
//
// 1. decode_attention: the step's attention over the KV cache.
//
// out[b, h, g] = softmax(q[b, h, g] . keys[b, h, :n_b] / sqrt(D)) @ values[b, h, :n_b],  n_b = lengths[b]
//
// q: [W, KV, G, D] (the G query heads that share key head h), keys/values: [W, KV, L, D] views of the cache
// (rows of D contiguous values), lengths: [W] int64, out: [W, KV, G, D]. Sums, the softmax and the weighted sum
// of values are in fp32; only the output is rounded to bf16. Each (row, key head) is one unit of work, spread over
// ATen's threads: it reads its row's own n_b keys and values once (a fused kernel for a general mask pays a fixed
// overhead per unit that dominates at a few queries, and reads the masked positions too).
//
// 2. The elementwise work between the step's matrix products, each a single pass where PyTorch runs several
// operations (at a few dozen rows each operation's fixed cost, not its arithmetic, is what a step pays):
// add_rms_norm (the residual add and the next RMSNorm), rotary_into_cache (rotate the new queries and keys, write
// the keys and values into the cache) and silu_mul (SiLU(gate) * up). Each rounds to bf16 wherever transformers'
// bf16 arithmetic does, so it computes what those operations compute, up to the order of one sum (RMSNorm's).
//
// 3. linear: the step's matrix products, y = x W^T (+ bias), on CPUs with AVX512_BF16, whose dot product of bf16
// pairs (vdpbf16ps) multiplies 32 bf16 values into 16 fp32 sums in one instruction. W [N, K] is laid out once
// (pack_linear_weight) as [N / 32][K / 2][32][2]: for each block of 32 outputs, the weights of input pair p for
// those 32 outputs lie together, so the loop streams each block's weights once, front to back, and multiplies
// each 128-byte step by one pair of every row's inputs (broadcast), with no horizontal sums at the end. Up to 12
// rows share a pass over the block (24 accumulators in registers); more rows take further passes, which read the
// block from the cache. Sums in fp32, the bias added to them, the output rounded to bf16 once.
//
// Every loop above spreads its units of work over ATen's threads (at::parallel_for, which is parallel only where
// the module is compiled with OpenMP: align.decode_kernels builds it so; parallel_threads reports it).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <vector>

namespace {

inline __m512 load_bf16(const at::BFloat16* p) {  // 16 bf16 -> 16 fp32 (a bf16 is the top half of an fp32)
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline __m512 round_bf16(__m512 x) {  // x rounded to the nearest bf16 (ties to even), kept in fp32: what a bf16
                                      // operation's result is
  __m512i bits = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));  // NaN stays NaN
  return _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline __m256i to_bf16(__m512 x) {  // 16 fp32 -> 16 bf16, rounded to nearest even
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_bf16(x)), 16));
}

inline void store_bf16(at::BFloat16* p, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(x));
}

inline __mmask16 first_lanes(int64_t n) {  // the first min(n, 16) of 16 lanes
  return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

inline __m512 load_bf16(const at::BFloat16* p, __mmask16 lanes) {  // the lanes given; 0 in the others
  __m256i raw = _mm256_maskz_loadu_epi16(lanes, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store_bf16(at::BFloat16* p, __m512 x, __mmask16 lanes) {  // the lanes given
  _mm256_mask_storeu_epi16(p, lanes, to_bf16(x));
}

// e^x as 2^n * e^r, |r| <= ln2 / 2; x below -87 counts as -87 (e^-87 ~ 1e-38: 0 wherever it is added to 1 or to
// the largest of a softmax's terms, e^0), and above ~88.7 it is inf, as in expf.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts (Cephes): n * hi is exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);  // Taylor series to r^7: relative error below 1e-7 on |r| <= ln2 / 2
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

// The sums of the lanes of sixteen vectors, as one vector: lane t = the sum of v[t]'s lanes (a tree of lane
// shuffles: 15 pairwise steps instead of 16 separate horizontal sums).
inline __m512 sum16(__m512* v) {
  __m512 a[8], b[4], c[2];
  for (int t = 0; t < 8; ++t)  // per 128-bit lane: [v0, v1, v0, v1] partial sums of two vectors
    a[t] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * t], v[2 * t + 1]), _mm512_unpackhi_ps(v[2 * t], v[2 * t + 1]));
  for (int t = 0; t < 4; ++t) {  // per 128-bit lane: [v0, v1, v2, v3]
    __m512d x = _mm512_castps_pd(a[2 * t]), y = _mm512_castps_pd(a[2 * t + 1]);
    b[t] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int t = 0; t < 2; ++t)  // 128-bit lanes: [v0..3 (lanes 0+1), v0..3 (2+3), v4..7 (0+1), v4..7 (2+3)]
    c[t] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * t], b[2 * t + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * t], b[2 * t + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

// e^(s_j - max s) in place over n scores; returns their sum.
inline float softmax_numerators(float* s, int64_t n) {
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) top = std::max(top, s[j]);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 lanes = first_lanes(n - j);
    __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + j), _mm512_set1_ps(top)));
    _mm512_mask_storeu_ps(s + j, lanes, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(lanes, e));
  }
  return _mm512_reduce_add_ps(sum);
}

template <int V>
inline void load_row(const at::BFloat16* p, __m512* row) {  // a row of 16 * V bf16 values, as fp32 vectors
  for (int i = 0; i < V; ++i) row[i] = load_bf16(p + i * 16);
}

template <int V>
inline __m512 dot_lanes(const __m512* query, const __m512* key) {  // q . k, still spread over 16 lanes
  __m512 sum = _mm512_mul_ps(query[0], key[0]);
  for (int i = 1; i < V; ++i) sum = _mm512_fmadd_ps(query[i], key[i], sum);
  return sum;
}

// One (row, key head): G queries against n keys and values, head_dim = 16 * V. V and G are compile-time
// constants so that the queries and the G x V accumulators live in registers.
template <int V, int G>
void attend(const at::BFloat16* q, const at::BFloat16* keys, const at::BFloat16* values, at::BFloat16* out,
            int64_t n, float scale, std::vector<float>& scores) {
  constexpr int64_t dim = V * 16;
  scores.resize(G * n);
  float* s = scores.data();
  __m512 query[G][V];
  for (int g = 0; g < G; ++g) {
    load_row<V>(q + g * dim, query[g]);
    for (int i = 0; i < V; ++i) query[g][i] = _mm512_mul_ps(query[g][i], _mm512_set1_ps(scale));
  }
  // 1. scores = q . k / sqrt(D), sixteen keys at a time
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 sums[G][16];
    for (int t = 0; t < 16; ++t) {
      __m512 key[V];
      load_row<V>(keys + (j + t) * dim, key);
      for (int g = 0; g < G; ++g) sums[g][t] = dot_lanes<V>(query[g], key);
    }
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(s + g * n + j, sum16(sums[g]));
  }
  for (; j < n; ++j) {
    __m512 key[V];
    load_row<V>(keys + j * dim, key);
    for (int g = 0; g < G; ++g) s[g * n + j] = _mm512_reduce_add_ps(dot_lanes<V>(query[g], key));
  }
  // 2. softmax numerators e^(s - max) in place, and their sums
  float total[G];
  for (int g = 0; g < G; ++g) total[g] = softmax_numerators(s + g * n, n);
  // 3. out = sum_j p_j v_j / sum_j p_j
  __m512 acc[G][V];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < V; ++i) acc[g][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; ++k) {
    __m512 value[V];
    load_row<V>(values + k * dim, value);
    for (int g = 0; g < G; ++g) {
      __m512 p = _mm512_set1_ps(s[g * n + k]);
      for (int i = 0; i < V; ++i) acc[g][i] = _mm512_fmadd_ps(p, value[i], acc[g][i]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < V; ++i)
      store_bf16(out + g * dim + i * 16, _mm512_mul_ps(acc[g][i], _mm512_set1_ps(1.0f / total[g])));
}

}  // namespace

// ---- 1. attention ------------------------------------------------------------------------------------------------

using AttendFn = void (*)(const at::BFloat16*, const at::BFloat16*, const at::BFloat16*, at::BFloat16*, int64_t,
                          float, std::vector<float>&);

template <int V>
AttendFn attend_for_groups(int64_t groups) {
  switch (groups) {
    case 1: return attend<V, 1>;
    case 2: return attend<V, 2>;
    case 3: return attend<V, 3>;
    case 4: return attend<V, 4>;
    case 5: return attend<V, 5>;
    case 6: return attend<V, 6>;
    case 7: return attend<V, 7>;
    case 8: return attend<V, 8>;
  }
  return nullptr;
}

AttendFn attend_for(int64_t dim, int64_t groups) {  // head_dim 16, 32, 64, 128; 1 to 8 query heads per key head
  switch (dim) {
    case 16: return attend_for_groups<1>(groups);
    case 32: return attend_for_groups<2>(groups);
    case 64: return attend_for_groups<4>(groups);
    case 128: return attend_for_groups<8>(groups);
  }
  return nullptr;
}

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor keys, torch::Tensor values, torch::Tensor lengths) {
  TORCH_CHECK(q.dtype() == torch::kBFloat16 && keys.dtype() == torch::kBFloat16 && values.dtype() == torch::kBFloat16,
              "decode_attention: bf16 tensors only");
  TORCH_CHECK(q.dim() == 4 && keys.dim() == 4 && values.dim() == 4, "decode_attention: 4-d q, keys, values");
  const int64_t width = q.size(0), heads = q.size(1), groups = q.size(2), dim = q.size(3);
  const AttendFn attend_unit = attend_for(dim, groups);
  TORCH_CHECK(attend_unit, "decode_attention: head_dim 16, 32, 64 or 128 and 1 to 8 query heads per key head");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1 && keys.stride(2) == dim && values.stride(2) == dim,
              "decode_attention: each key and value row contiguous");
  q = q.contiguous();
  auto out = torch::empty_like(q);
  auto length = lengths.to(torch::kLong).contiguous();
  const int64_t* n = length.data_ptr<int64_t>();
  for (int64_t b = 0; b < width; ++b)
    TORCH_CHECK(n[b] >= 1 && n[b] <= keys.size(2), "decode_attention: lengths within [1, keys.size(2)]");
  const auto* q_ptr = q.data_ptr<at::BFloat16>();
  const auto* k_ptr = keys.data_ptr<at::BFloat16>();
  const auto* v_ptr = values.data_ptr<at::BFloat16>();
  auto* out_ptr = out.data_ptr<at::BFloat16>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  at::parallel_for(0, width * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / heads, h = unit % heads;
      attend_unit(q_ptr + (b * heads + h) * groups * dim, k_ptr + b * keys.stride(0) + h * keys.stride(1),
                  v_ptr + b * values.stride(0) + h * values.stride(1), out_ptr + (b * heads + h) * groups * dim,
                  n[b], scale, scores);
    }
  });
  return out;
}

// ---- 2. the elementwise work between the products ----------------------------------------------------------------

// x [N, H] (+ delta [N, H]) -> (the sum, RMSNorm(the sum) * weight), as transformers computes them in bf16: the
// sum rounded to bf16; then in fp32 h * rsqrt(mean(h^2) + eps), rounded to bf16, times the weight, rounded.
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, c10::optional<torch::Tensor> delta, torch::Tensor weight,
                                        double eps) {
  TORCH_CHECK(x.dtype() == torch::kBFloat16 && weight.dtype() == torch::kBFloat16 && x.dim() == 2,
              "add_rms_norm: bf16 x [N, H] and weight [H]");
  const int64_t rows = x.size(0), hidden = x.size(1);
  TORCH_CHECK(weight.numel() == hidden, "add_rms_norm: weight of x.size(1) values");
  x = x.contiguous();
  weight = weight.contiguous();
  torch::Tensor sum = x;
  if (delta.has_value()) {
    TORCH_CHECK(delta->sizes() == x.sizes() && delta->dtype() == torch::kBFloat16, "add_rms_norm: delta like x");
    sum = torch::empty_like(sum);
  }
  torch::Tensor added = delta.has_value() ? delta->contiguous() : torch::Tensor();
  auto normed = torch::empty_like(sum);
  const auto* x_ptr = x.data_ptr<at::BFloat16>();
  const auto* d_ptr = delta.has_value() ? added.data_ptr<at::BFloat16>() : nullptr;
  const auto* w_ptr = weight.data_ptr<at::BFloat16>();
  auto* s_ptr = sum.data_ptr<at::BFloat16>();
  auto* n_ptr = normed.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = r * hidden;
      __m512 squares = _mm512_setzero_ps();
      for (int64_t i = 0; i < hidden; i += 16) {
        const __mmask16 lanes = first_lanes(hidden - i);
        __m512 h = load_bf16(x_ptr + row + i, lanes);
        if (d_ptr) {
          h = round_bf16(_mm512_add_ps(h, load_bf16(d_ptr + row + i, lanes)));
          store_bf16(s_ptr + row + i, h, lanes);
        }
        squares = _mm512_fmadd_ps(h, h, squares);
      }
      const float scale = 1.0f / std::sqrt(_mm512_reduce_add_ps(squares) / hidden + static_cast<float>(eps));
      for (int64_t i = 0; i < hidden; i += 16) {
        const __mmask16 lanes = first_lanes(hidden - i);
        __m512 h = load_bf16((d_ptr ? s_ptr : x_ptr) + row + i, lanes);
        h = round_bf16(_mm512_mul_ps(h, _mm512_set1_ps(scale)));
        store_bf16(n_ptr + row + i, _mm512_mul_ps(load_bf16(w_ptr + i, lanes), h), lanes);
      }
    }
  });
  return {sum, normed};
}

// One head's D values rotated as transformers' rotary embedding does in bf16: x * cos + rotate_half(x) * sin,
// each product and the sum rounded to bf16 (rotate_half(x) = [-x[D/2:], x[:D/2]]).
inline void rotate_head(const at::BFloat16* x, const at::BFloat16* cos, const at::BFloat16* sin, at::BFloat16* out,
                        int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 lanes = first_lanes(half - i);
    const __m512 first = load_bf16(x + i, lanes), second = load_bf16(x + half + i, lanes);
    const __m512 low = _mm512_add_ps(round_bf16(_mm512_mul_ps(first, load_bf16(cos + i, lanes))),
                                     round_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), second),
                                                              load_bf16(sin + i, lanes))));
    const __m512 high = _mm512_add_ps(round_bf16(_mm512_mul_ps(second, load_bf16(cos + half + i, lanes))),
                                      round_bf16(_mm512_mul_ps(first, load_bf16(sin + half + i, lanes))));
    store_bf16(out + i, low, lanes);
    store_bf16(out + half + i, high, lanes);
  }
}

// qkv [W, (H + 2 KV) * D], the output of the fused projection -> the rotated queries [W, H, D]; the rotated keys
// and the values are written into the cache, keys/values [slots, KV, L, D], at row b, position positions[b]. cos
// and sin [W, D]: each row's rotary table entries, at its position.
torch::Tensor rotary_into_cache(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                                torch::Tensor keys, torch::Tensor values, int64_t heads) {
  TORCH_CHECK(qkv.dtype() == torch::kBFloat16 && keys.dtype() == torch::kBFloat16 && cos.dtype() == torch::kBFloat16
              && sin.dtype() == torch::kBFloat16 && values.dtype() == torch::kBFloat16,
              "rotary_into_cache: bf16 tensors only");
  TORCH_CHECK(keys.dim() == 4 && keys.is_contiguous() && values.is_contiguous() && keys.sizes() == values.sizes(),
              "rotary_into_cache: contiguous keys and values [slots, KV, L, D]");
  const int64_t width = qkv.size(0), kv_heads = keys.size(1), capacity = keys.size(2), dim = keys.size(3);
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(1) == (heads + 2 * kv_heads) * dim && dim % 2 == 0 && width <= keys.size(0),
              "rotary_into_cache: qkv [W, (heads + 2 kv_heads) * D] for W cache rows");
  auto position = positions.to(torch::kLong).contiguous();
  const int64_t* p = position.data_ptr<int64_t>();
  for (int64_t b = 0; b < width; ++b)
    TORCH_CHECK(p[b] >= 0 && p[b] < capacity, "rotary_into_cache: positions within the cache");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == width && cos.size(1) == dim,
              "rotary_into_cache: cos and sin [W, D]");
  qkv = qkv.contiguous();
  cos = cos.contiguous();
  sin = sin.contiguous();
  auto q = torch::empty({width, heads, dim}, qkv.options());
  const auto* in = qkv.data_ptr<at::BFloat16>();
  const auto *cos_ptr = cos.data_ptr<at::BFloat16>(), *sin_ptr = sin.data_ptr<at::BFloat16>();
  auto *q_ptr = q.data_ptr<at::BFloat16>(), *k_ptr = keys.data_ptr<at::BFloat16>();
  auto* v_ptr = values.data_ptr<at::BFloat16>();
  const int64_t row_size = (heads + 2 * kv_heads) * dim;
  at::parallel_for(0, width, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const at::BFloat16* row = in + b * row_size;
      const at::BFloat16 *c = cos_ptr + b * dim, *s = sin_ptr + b * dim;
      for (int64_t h = 0; h < heads; ++h) rotate_head(row + h * dim, c, s, q_ptr + (b * heads + h) * dim, dim);
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at_position = ((b * kv_heads + h) * capacity + p[b]) * dim;
        rotate_head(row + (heads + h) * dim, c, s, k_ptr + at_position, dim);
        std::copy(row + (heads + kv_heads + h) * dim, row + (heads + kv_heads + h + 1) * dim, v_ptr + at_position);
      }
    }
  });
  return q;
}

// gate_up [N, 2I] = [gate, up] -> SiLU(gate) * up [N, I]: SiLU in fp32 (x / (1 + e^-x)) rounded to bf16, then the
// product rounded, as F.silu(gate) * up computes them in bf16.
torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.dtype() == torch::kBFloat16 && gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
              "silu_mul: bf16 gate_up [N, 2I]");
  gate_up = gate_up.contiguous();
  const int64_t rows = gate_up.size(0), size = gate_up.size(1) / 2;
  auto out = torch::empty({rows, size}, gate_up.options());
  const auto* in = gate_up.data_ptr<at::BFloat16>();
  auto* out_ptr = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const at::BFloat16 *gate = in + r * 2 * size, *up = gate + size;
      for (int64_t i = 0; i < size; i += 16) {
        const __mmask16 lanes = first_lanes(size - i);
        const __m512 g = load_bf16(gate + i, lanes);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = round_bf16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
        store_bf16(out_ptr + r * size + i, _mm512_mul_ps(silu, load_bf16(up + i, lanes)), lanes);
      }
    }
  });
  return out;
}

// -- 3. linear ----------------------------------------------------------------------------------------------------

// Compilers before GCC 10 and Clang 9 know no AVX512_BF16: there the module builds without `linear` serving any CPU.
#if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10)
#define ALIGN_BF16_DOT 1
#else
#define ALIGN_BF16_DOT 0
#endif

constexpr int64_t BLOCK = 32;  // outputs per packed block: two vectors of 16 fp32 sums
constexpr int MAX_TILE_ROWS = 12;  // rows per pass over a block: 2 x 12 accumulators + 2 weight vectors in registers

// W [N, K] -> [N / 32][K / 2][32][2] (see 3. above); N a multiple of 32, K even.
torch::Tensor pack_linear_weight(torch::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "pack_linear_weight: a 2-d bf16 weight");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n % BLOCK == 0 && k % 2 == 0, "pack_linear_weight: N must be a multiple of 32 and K even, not ", n,
              " x ", k);
  return weight.reshape({n / BLOCK, BLOCK, k / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

// `rows` rows of x [rows, K] against one packed block [K / 2][32][2] -> out[:, 0:32] of rows with stride n.
#if ALIGN_BF16_DOT
template <int ROWS>
__attribute__((target("avx512bf16"))) void linear_tile(const at::BFloat16* x, int64_t k, const at::BFloat16* block,
                                                        const float* bias, at::BFloat16* out, int64_t n) {
  __m512 low[ROWS], high[ROWS];  // outputs 0-15 and 16-31 of each row
  const __m512 bias_low = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  const __m512 bias_high = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
  for (int r = 0; r < ROWS; ++r) { low[r] = bias_low; high[r] = bias_high; }
  const int32_t* pairs = reinterpret_cast<const int32_t*>(x);  // each row's inputs as K / 2 pairs
  for (int64_t p = 0; p < k / 2; ++p) {
    const __m512bh w_low = (__m512bh)_mm512_loadu_si512(block + p * 2 * BLOCK);
    const __m512bh w_high = (__m512bh)_mm512_loadu_si512(block + p * 2 * BLOCK + BLOCK);
    for (int r = 0; r < ROWS; ++r) {
      const __m512bh x_pair = (__m512bh)_mm512_set1_epi32(pairs[r * k / 2 + p]);
      low[r] = _mm512_dpbf16_ps(low[r], x_pair, w_low);
      high[r] = _mm512_dpbf16_ps(high[r], x_pair, w_high);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    store_bf16(out + r * n, low[r]);
    store_bf16(out + r * n + 16, high[r]);
  }
}

template <int ROWS = MAX_TILE_ROWS>
void linear_rows(int64_t rows, const at::BFloat16* x, int64_t k, const at::BFloat16* block, const float* bias,
                 at::BFloat16* out, int64_t n) {  // 1 to MAX_TILE_ROWS rows: the tile built for exactly that many
  if constexpr (ROWS > 1) {
    if (rows < ROWS) return linear_rows<ROWS - 1>(rows, x, k, block, bias, out, n);
  }
  linear_tile<ROWS>(x, k, block, bias, out, n);
}
#endif

// x [M, K] bf16 (contiguous), packed = pack_linear_weight(W [N, K]), bias [N] fp32 or None -> x W^T + bias [M, N].
torch::Tensor linear(torch::Tensor x, torch::Tensor packed, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(ALIGN_BF16_DOT, "linear: this module was built by a compiler without AVX512_BF16");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16, "linear: x [M, K] bf16");
  const int64_t rows = x.size(0), k = x.size(1), blocks = packed.size(0), n = blocks * BLOCK;
  TORCH_CHECK(packed.dim() == 4 && packed.size(1) * 2 == k && packed.size(2) == BLOCK, "linear: a weight of K = ",
              packed.size(1) * 2, " for x of K = ", k);
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == n && bias->is_contiguous(), "linear: bias");
    bias_ptr = bias->data_ptr<float>();
  }
  auto out = torch::empty({rows, n}, x.options());
  const at::BFloat16* x_ptr = x.data_ptr<at::BFloat16>();
  const at::BFloat16* w_ptr = packed.data_ptr<at::BFloat16>();
  at::BFloat16* out_ptr = out.data_ptr<at::BFloat16>();
#if ALIGN_BF16_DOT
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t r = 0; r < rows; r += MAX_TILE_ROWS) {
        linear_rows(std::min<int64_t>(MAX_TILE_ROWS, rows - r), x_ptr + r * k, k, w_ptr + b * k * BLOCK,
                    bias_ptr ? bias_ptr + b * BLOCK : nullptr, out_ptr + r * n + b * BLOCK, n);
      }
    }
  });
#endif
  return out;
}

// Whether linear serves this CPU: it has AVX512_BF16's dot product, and no AMX (whose tiles oneDNN's products use).
bool linear_serves_cpu() {
#if ALIGN_BF16_DOT
  unsigned a, b, c, d;  // CPUID leaf 7: sub-leaf 1 EAX bit 5 is AVX512_BF16, sub-leaf 0 EDX bit 24 AMX-TILE
  const bool bf16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1);
  const bool amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1);
  return bf16 && !amx;
#else
  return false;
#endif
}

int64_t parallel_threads() {  // how many threads at::parallel_for ran an even split of 64 units on
  std::vector<int> used(at::get_num_threads(), 0);
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = 1; });
  int64_t count = 0;
  for (int u : used) count += u;
  return count;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_linear_weight", &pack_linear_weight);
  m.def("linear", &linear);
  m.def("linear_serves_cpu", &linear_serves_cpu);
  m.def("parallel_threads", &parallel_threads);
  m.def("decode_attention", &decode_attention);
  m.def("add_rms_norm", &add_rms_norm);
  m.def("rotary_into_cache", &rotary_into_cache);
  m.def("silu_mul", &silu_mul);
}
