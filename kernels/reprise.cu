// reprise's CUDA kernels: paged attention (split-K decode, causal prefill over
// cached prefixes), writing K/V into the paged cache with fused bias / q-k norm /
// rotary, RMSNorm, SiLU-gate and small gathers. bf16 storage, f32 arithmetic.
//
// Paged KV cache layout (per layer, K and V alike), the same as the CPU cache:
//   cache[block][slot_in_block][kv_head][head_dim]
// so a token's physical slot is block_table[pos / block_size] * block_size + pos % block_size.
// Block size is a run-time parameter. See kernels/README.md for launch shapes.
//
// Every kernel is extern "C" so the Rust side can look it up by name in the PTX.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define WARP 32
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int nwarps = (blockDim.x + WARP - 1) / WARP;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(t);
}

__device__ __forceinline__ size_t slot_of(const int* table, int pos, int block_size) {
    return (size_t)table[pos / block_size] * block_size + pos % block_size;
}

// ---------------------------------------------------------------------------
// Elementwise and row kernels
// ---------------------------------------------------------------------------

// out[t] = table[ids[t]]; grid (T), block 256.
extern "C" __global__ void embed_rows(bf16* out, const bf16* table, const int* ids, int h) {
    const size_t src = (size_t)ids[blockIdx.x] * h, dst = (size_t)blockIdx.x * h;
    for (int i = threadIdx.x; i < h; i += blockDim.x) out[dst + i] = table[src + i];
}

// out[i] = x[rows[i]]; picks each sequence's last token before the LM head. grid (B), block 256.
extern "C" __global__ void gather_rows(bf16* out, const bf16* x, const int* rows, int h) {
    const size_t src = (size_t)rows[blockIdx.x] * h, dst = (size_t)blockIdx.x * h;
    for (int i = threadIdx.x; i < h; i += blockDim.x) out[dst + i] = x[src + i];
}

// out = x / rms(x) * w per row, in f32, rounded once. grid (T), block 256 (any multiple of 32).
extern "C" __global__ void rms_norm(bf16* out, const bf16* x, const bf16* w, int h, float eps) {
    __shared__ float scratch[32];
    const bf16* xr = x + (size_t)blockIdx.x * h;
    bf16* orow = out + (size_t)blockIdx.x * h;
    float ss = 0.f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        float v = __bfloat162float(xr[i]);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x)
        orow[i] = __float2bfloat16(__bfloat162float(xr[i]) * inv * __bfloat162float(w[i]));
}

// out[t][i] = silu(gu[t][i]) * gu[t][inter + i]: the fused gate|up projection's
// output, gate columns first. grid-stride over T * inter.
extern "C" __global__ void silu_mul(bf16* out, const bf16* gu, int t_rows, int inter) {
    const size_t n = (size_t)t_rows * inter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / inter, c = i % inter;
        const float g = __bfloat162float(gu[r * 2 * inter + c]);
        const float u = __bfloat162float(gu[r * 2 * inter + inter + c]);
        out[i] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    }
}

// After the fused QKV projection, per token row t and head: add the bias (Qwen2),
// RMS-normalise the head (Qwen3 q/k norm), rotate q and k (half-split / NeoX
// rotary at positions[t]), write q back in place and k / v into the paged cache
// at slots[t] (reshape-and-cache).
// grid (T, n_heads + 2 * n_kv_heads), block hd / 2: thread i owns the pair (i, i + hd/2).
extern "C" __global__ void qkv_rope_cache(
    bf16* qkv, int qkv_stride, const bf16* bias, const bf16* q_norm, const bf16* k_norm,
    float eps, const int* positions, const float* inv_freq, const int* slots,
    bf16* k_cache, bf16* v_cache, int n_heads, int n_kv_heads, int hd) {
    __shared__ float scratch[32];
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = hd / 2;
    const int col = head * hd;  // q heads, then k heads, then v heads
    bf16* row = qkv + (size_t)t * qkv_stride + col;
    float a = __bfloat162float(row[i]), b = __bfloat162float(row[i + half]);
    if (bias) {
        a += __bfloat162float(bias[col + i]);
        b += __bfloat162float(bias[col + i + half]);
        // transformers' biased projection comes out of the matmul rounded to bf16; match it.
        a = __bfloat162float(__float2bfloat16(a));
        b = __bfloat162float(__float2bfloat16(b));
    }
    const bool is_q = head < n_heads, is_k = !is_q && head < n_heads + n_kv_heads;
    const size_t slot = (size_t)slots[t];
    if (is_q || is_k) {
        const bf16* nw = is_q ? q_norm : k_norm;
        if (nw) {
            // block_sum is collective: every thread of the block takes this branch together.
            const float inv = rsqrtf(block_sum(a * a + b * b, scratch) / hd + eps);
            a = __bfloat162float(__float2bfloat16(a * inv * __bfloat162float(nw[i])));
            b = __bfloat162float(__float2bfloat16(b * inv * __bfloat162float(nw[i + half])));
        }
        // Angle in f32 (as transformers computes it), cos/sin in full precision.
        const float ang = (float)positions[t] * inv_freq[i];
        float s, c;
        sincosf(ang, &s, &c);
        const bf16 ra = __float2bfloat16(a * c - b * s), rb = __float2bfloat16(b * c + a * s);
        if (is_q) {
            row[i] = ra;
            row[i + half] = rb;
        } else {
            const int kvh = head - n_heads;
            bf16* dst = k_cache + (slot * n_kv_heads + kvh) * hd;
            dst[i] = ra;
            dst[i + half] = rb;
        }
    } else {
        const int kvh = head - n_heads - n_kv_heads;
        bf16* dst = v_cache + (slot * n_kv_heads + kvh) * hd;
        dst[i] = __float2bfloat16(a);
        dst[i + half] = __float2bfloat16(b);
    }
}

// Plain reshape-and-cache: k_src / v_src rows (stride src_stride) into the cache at slots[t].
// grid (T), block 256. Used by the kernel self-test and by callers that rotate elsewhere.
extern "C" __global__ void reshape_and_cache(const bf16* k_src, const bf16* v_src, int src_stride,
                                             const int* slots, bf16* k_cache, bf16* v_cache,
                                             int row_len) {
    const size_t t = blockIdx.x, slot = (size_t)slots[t];
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        k_cache[slot * row_len + i] = k_src[t * src_stride + i];
        v_cache[slot * row_len + i] = v_src[t * src_stride + i];
    }
}

// ---------------------------------------------------------------------------
// Paged decode attention with split-K (flash-decoding)
// ---------------------------------------------------------------------------
//
// One new query token per sequence. CTA = (kv head, sequence, split): the split
// covers context positions [split * partition, (split + 1) * partition). All
// `group = n_heads / n_kv_heads` query heads of the kv head are done together
// so each K/V row is read once per CTA (GQA).
//
// Phase 1: lane-per-key scores for every head of the group into shared memory.
// Phase 2: per-head max and sum over the split.
// Phase 3: P.V with warps over keys, lanes over dims; cross-warp sum in shared.
// With n_splits == 1 the result is written normalised to `out`; otherwise each
// split writes its normalised partial output and (max, sum) for decode_merge.
//
// grid (n_kv_heads, n_seqs, n_splits), block 128,
// dynamic shared = (group*HD + group*partition + 4*group*HD) floats.
#define DEC_WARPS 4
#define MAX_GROUP 8

template <int HD>
__device__ void decode_impl(float* part_out, float* part_ml, bf16* out, int out_stride,
                            const bf16* q, int q_stride, const bf16* k_cache,
                            const bf16* v_cache, const int* block_tables, int bt_stride,
                            const int* rows, const int* ctx_lens, int n_heads, int n_kv_heads,
                            int block_size, float scale, int partition, int n_splits) {
    extern __shared__ float smem[];
    const int kvh = blockIdx.x, s = blockIdx.y, split = blockIdx.z;
    const int group = n_heads / n_kv_heads;
    const int ctx = ctx_lens[s];
    const int row = rows[s];
    const int k0 = split * partition;
    const int k1 = min(ctx, k0 + partition);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int* table = block_tables + (size_t)s * bt_stride;
    const int row_len = n_kv_heads * HD;
    float* qs = smem;                          // [group][HD]
    float* sc = qs + group * HD;               // [group][partition]
    float* red = sc + group * partition;       // [DEC_WARPS][group][HD]

    const size_t part_base = ((size_t)s * n_heads + (size_t)kvh * group) * n_splits + split;
    if (k0 >= k1) {
        // This split is past the sequence's end: an empty partial the merge skips.
        if (n_splits > 1 && threadIdx.x < group) {
            const size_t p = part_base + (size_t)threadIdx.x * n_splits;
            part_ml[p * 2] = NEG_INF;
            part_ml[p * 2 + 1] = 0.f;
        }
        return;
    }
    for (int i = threadIdx.x; i < group * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD;
        qs[i] = __bfloat162float(q[(size_t)row * q_stride + (kvh * group + g) * HD + d]) * scale;
    }
    __syncthreads();

    // Phase 1: scores. Lane-per-key: each thread reads whole K rows (16-byte loads).
    for (int p = k0 + threadIdx.x; p < k1; p += blockDim.x) {
        const bf16* kr = k_cache + slot_of(table, p, block_size) * row_len + kvh * HD;
        float acc[MAX_GROUP];
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) acc[g] = 0.f;
#pragma unroll 4
        for (int d = 0; d < HD; d += 8) {
            const uint4 raw = *reinterpret_cast<const uint4*>(kr + d);
            const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 kf = __bfloat1622float2(k2[j]);
#pragma unroll
                for (int g = 0; g < MAX_GROUP; g++)
                    if (g < group)
                        acc[g] += qs[g * HD + d + 2 * j] * kf.x + qs[g * HD + d + 2 * j + 1] * kf.y;
            }
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++)
            if (g < group) sc[g * partition + (p - k0)] = acc[g];
    }
    __syncthreads();

    // Phase 2: softmax statistics per head (warp g handles heads g, g+4, ...).
    __shared__ float stat_m[MAX_GROUP], stat_l[MAX_GROUP];
    const int n = k1 - k0;
    for (int g = warp; g < group; g += DEC_WARPS) {
        float m = NEG_INF;
        for (int j = lane; j < n; j += WARP) m = fmaxf(m, sc[g * partition + j]);
        m = warp_max(m);
        float l = 0.f;
        for (int j = lane; j < n; j += WARP) {
            const float e = __expf(sc[g * partition + j] - m);
            sc[g * partition + j] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            stat_m[g] = m;
            stat_l[g] = l;
        }
    }
    __syncthreads();

    // Phase 3: P.V. Warp w takes keys w, w+4, ...; lane owns dims 2*lane + 64*i (bf16x2 loads).
    constexpr int PAIRS = HD / 64 > 0 ? HD / 64 : 1;
    float acc[MAX_GROUP][PAIRS][2];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++)
#pragma unroll
        for (int i = 0; i < PAIRS; i++) acc[g][i][0] = acc[g][i][1] = 0.f;
    for (int j = warp; j < n; j += DEC_WARPS) {
        const bf16* vr = v_cache + slot_of(table, k0 + j, block_size) * row_len + kvh * HD;
#pragma unroll
        for (int i = 0; i < PAIRS; i++) {
            const int d = 2 * lane + 64 * i;
            if (d < HD) {
                const float2 vf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vr + d));
#pragma unroll
                for (int g = 0; g < MAX_GROUP; g++)
                    if (g < group) {
                        const float pw = sc[g * partition + j];
                        acc[g][i][0] += pw * vf.x;
                        acc[g][i][1] += pw * vf.y;
                    }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++)
        if (g < group)
#pragma unroll
            for (int i = 0; i < PAIRS; i++) {
                const int d = 2 * lane + 64 * i;
                if (d < HD) {
                    red[(warp * group + g) * HD + d] = acc[g][i][0];
                    red[(warp * group + g) * HD + d + 1] = acc[g][i][1];
                }
            }
    __syncthreads();
    for (int i = threadIdx.x; i < group * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) v += red[(w * group + g) * HD + d];
        v /= stat_l[g];
        if (n_splits == 1) {
            out[(size_t)row * out_stride + (kvh * group + g) * HD + d] = __float2bfloat16(v);
        } else {
            const size_t p = part_base + (size_t)g * n_splits;
            part_out[p * HD + d] = v;
            if (d == 0) {
                part_ml[p * 2] = stat_m[g];
                part_ml[p * 2 + 1] = stat_l[g];
            }
        }
    }
}

// Log-sum-exp combine of the splits: out = sum_s w_s o_s / sum_s w_s with
// w_s = l_s * exp(m_s - max_s m_s). grid (n_heads, n_seqs), block HD.
extern "C" __global__ void decode_merge(bf16* out, int out_stride, const float* part_out,
                                        const float* part_ml, const int* rows, int n_heads,
                                        int hd, int n_splits) {
    const int h = blockIdx.x, s = blockIdx.y, d = threadIdx.x;
    const size_t base = ((size_t)s * n_heads + h) * n_splits;
    float m = NEG_INF;
    for (int k = 0; k < n_splits; k++) m = fmaxf(m, part_ml[(base + k) * 2]);
    float num = 0.f, den = 0.f;
    for (int k = 0; k < n_splits; k++) {
        const float l = part_ml[(base + k) * 2 + 1];
        if (l == 0.f) continue;
        const float w = l * __expf(part_ml[(base + k) * 2] - m);
        num += w * part_out[(base + k) * hd + d];
        den += w;
    }
    out[(size_t)rows[s] * out_stride + h * hd + d] = __float2bfloat16(num / den);
}

#define DECODE_ENTRY(HD)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_hd##HD(                      \
        float* part_out, float* part_ml, bf16* out, int out_stride, const bf16* q,            \
        int q_stride, const bf16* k_cache, const bf16* v_cache, const int* block_tables,       \
        int bt_stride, const int* rows, const int* ctx_lens, int n_heads, int n_kv_heads,      \
        int block_size, float scale, int partition, int n_splits) {                           \
        decode_impl<HD>(part_out, part_ml, out, out_stride, q, q_stride, k_cache, v_cache,     \
                        block_tables, bt_stride, rows, ctx_lens, n_heads, n_kv_heads,          \
                        block_size, scale, partition, n_splits);                               \
    }
DECODE_ENTRY(64)
DECODE_ENTRY(128)

// ---------------------------------------------------------------------------
// Causal prefill attention over a cached prefix (variable length, paged)
// ---------------------------------------------------------------------------
//
// Sequence s has n_new[s] new query rows (starting at q/out row q_row[s]) at
// absolute positions start[s] .. start[s] + n_new[s] - 1; its K/V for positions
// 0 .. start + n_new - 1 (the cached prefix and the new tokens) are already in
// the cache, read through its block table. Row i sees keys 0 ..= start + i.
//
// CTA = (tile of 16 query rows, query head, sequence); 4 warps x 4 rows each.
// Keys stream through shared memory 32 at a time (one per lane for QK^T, padded
// rows so lanes hit distinct banks); online softmax per row in registers.
// grid (ceil(max n_new / 16), n_heads, n_seqs), block 128.
#define PF_WARPS 4
#define PF_ROWS 4
#define PF_TILE_Q (PF_WARPS * PF_ROWS)
#define PF_KEYS 32

template <int HD>
__device__ void prefill_impl(bf16* out, int out_stride, const bf16* q, int q_stride,
                             const bf16* k_cache, const bf16* v_cache, const int* block_tables,
                             int bt_stride, const int* q_row, const int* start, const int* n_new,
                             int n_heads, int n_kv_heads, int block_size, float scale) {
    constexpr int KP = HD + 2;  // padded K row (bf16): row stride HD/2+1 words -> no bank conflicts
    constexpr int DPL = HD / WARP;
    __shared__ float qs[PF_TILE_Q][HD];
    __shared__ __align__(16) bf16 ks[PF_KEYS * KP];
    __shared__ __align__(16) bf16 vs[PF_KEYS * HD];
    const int s = blockIdx.z, h = blockIdx.y;
    const int nn = n_new[s];
    const int i0 = blockIdx.x * PF_TILE_Q;
    if (i0 >= nn) return;  // whole CTA leaves together: no barrier is skipped by some threads only
    const int st = start[s], row0 = q_row[s];
    const int kvh = h / (n_heads / n_kv_heads);
    const int row_len = n_kv_heads * HD;
    const int* table = block_tables + (size_t)s * bt_stride;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;

    for (int i = threadIdx.x; i < PF_TILE_Q * HD; i += blockDim.x) {
        const int r = i / HD, d = i % HD;
        qs[r][d] = i0 + r < nn
                       ? __bfloat162float(q[(size_t)(row0 + i0 + r) * q_stride + h * HD + d]) * scale
                       : 0.f;
    }
    float m[PF_ROWS], l[PF_ROWS], acc[PF_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < PF_ROWS; r++) {
        m[r] = NEG_INF;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.f;
    }
    // Keys this tile needs: up to the last valid row's position.
    const int last = min(nn, i0 + PF_TILE_Q) - 1;
    const int kend = st + last + 1;
    for (int kb = 0; kb < kend; kb += PF_KEYS) {
        __syncthreads();  // previous tile fully consumed (and qs written on the first pass)
        // Cooperative load: 32 keys x HD for K and V, 16-byte global loads.
        constexpr int VEC = HD / 8;
        for (int i = threadIdx.x; i < PF_KEYS * VEC; i += blockDim.x) {
            const int j = i / VEC, c = (i % VEC) * 8;
            const int p = kb + j;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (p < kend) {
                const size_t off = slot_of(table, p, block_size) * row_len + kvh * HD + c;
                kv = *reinterpret_cast<const uint4*>(k_cache + off);
                vv = *reinterpret_cast<const uint4*>(v_cache + off);
            }
            const uint32_t* kw = reinterpret_cast<const uint32_t*>(&kv);
            uint32_t* kd = reinterpret_cast<uint32_t*>(ks + j * KP + c);
#pragma unroll
            for (int w = 0; w < 4; w++) kd[w] = kw[w];
            *reinterpret_cast<uint4*>(vs + j * HD + c) = vv;
        }
        __syncthreads();
        const int p = kb + lane;  // this lane's key
#pragma unroll
        for (int r = 0; r < PF_ROWS; r++) {
            const int qi = i0 + warp * PF_ROWS + r;  // row within the sequence
            if (qi >= nn) continue;                  // warp-uniform
            const int visible = st + qi + 1;
            if (kb >= visible) continue;             // warp-uniform: nothing visible in this tile
            float sc = 0.f;
            const __nv_bfloat162* kr = reinterpret_cast<const __nv_bfloat162*>(ks + lane * KP);
#pragma unroll 8
            for (int d2 = 0; d2 < HD / 2; d2++) {
                const float2 kf = __bfloat1622float2(kr[d2]);
                sc += qs[warp * PF_ROWS + r][2 * d2] * kf.x + qs[warp * PF_ROWS + r][2 * d2 + 1] * kf.y;
            }
            if (p >= visible) sc = NEG_INF;
            const float mt = warp_max(sc);
            const float mn = fmaxf(m[r], mt);
            const float pe = __expf(sc - mn);  // 0 for masked keys
            const float corr = __expf(m[r] - mn);
            l[r] = l[r] * corr + warp_sum(pe);
            m[r] = mn;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            const int nk = min(PF_KEYS, visible - kb);
            for (int j = 0; j < nk; j++) {
                const float pj = __shfl_sync(0xffffffffu, pe, j);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[r][i] += pj * __bfloat162float(vs[j * HD + lane + WARP * i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < PF_ROWS; r++) {
        const int qi = i0 + warp * PF_ROWS + r;
        if (qi >= nn) continue;
        bf16* o = out + (size_t)(row0 + qi) * out_stride + h * HD;
#pragma unroll
        for (int i = 0; i < DPL; i++) o[lane + WARP * i] = __float2bfloat16(acc[r][i] / l[r]);
    }
}

#define PREFILL_ENTRY(HD)                                                                      \
    extern "C" __global__ void __launch_bounds__(128) paged_prefill_hd##HD(                    \
        bf16* out, int out_stride, const bf16* q, int q_stride, const bf16* k_cache,          \
        const bf16* v_cache, const int* block_tables, int bt_stride, const int* q_row,        \
        const int* start, const int* n_new, int n_heads, int n_kv_heads, int block_size,      \
        float scale) {                                                                         \
        prefill_impl<HD>(out, out_stride, q, q_stride, k_cache, v_cache, block_tables,         \
                         bt_stride, q_row, start, n_new, n_heads, n_kv_heads, block_size,      \
                         scale);                                                               \
    }
PREFILL_ENTRY(64)
PREFILL_ENTRY(128)
