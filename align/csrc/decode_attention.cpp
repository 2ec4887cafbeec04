// Attention of one decode step over align's KV cache, for bf16 caches on CPUs with AVX-512.
//
// out[b, h, g] = softmax(q[b, h, g] . keys[b, h, :n_b] / sqrt(D)) @ values[b, h, :n_b],  n_b = lengths[b]
//
// q: [W, KV, G, D] (the G query heads that share key head h), keys/values: [W, KV, L, D] views of the cache
// (rows of D contiguous values), lengths: [W] int64, out: [W, KV, G, D]. Sums, the softmax and the weighted sum
// of values are in fp32; only the output is rounded to bf16. Each (row, key head) is one unit of work, spread over
// ATen's threads: it reads its row's own n_b keys and values once (a fused kernel for a general mask pays a fixed
// overhead per unit that dominates at a few queries, and reads the masked positions too).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <vector>

namespace {

inline __m512 load_bf16(const at::BFloat16* p) {  // 16 bf16 -> 16 fp32 (a bf16 is the top half of an fp32)
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store_bf16(at::BFloat16* p, __m512 x) {  // 16 fp32 -> 16 bf16, rounded to nearest even
  __m512i bits = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));  // NaN stays NaN
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}

inline __m512 exp_ps(__m512 x) {  // e^x for x <= 0 (scores minus their maximum): 2^n * e^r, |r| <= ln2 / 2
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
    __mmask16 lanes = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
