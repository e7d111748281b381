// y = x Wᵀ + b for a pruned weight W, from its kept weights only: this project's sparse CPU kernel.
//
// What it computes. A Linear with W (out × in) and a batch of T tokens x (T × in, row-major, as the
// model holds its activations): y[t][r] = b[r] + Σ_k W[r][c_k] · x[t][c_k], summed over the kept
// weights k of row r only. At 90% sparsity that is a tenth of the dense product's multiply-adds.
//
// Why a dense kernel wins anyway, unless the sparse one is careful. A dense GEMM streams W and x
// through registers and caches near the chip's peak (here ~200 GFLOP/s on 2 cores). A sparse
// product reads the kept weights at irregular columns c_k, so each multiply-add needs its own load
// of x[t][c_k]: done one token at a time, that is a scalar load per multiply-add, and it loses.
//
// The layout that makes it pay:
//  1. W in CSR by output row: row_ptr (out + 1), col (nnz), val (nnz); row r's kept weights are
//     val[row_ptr[r] .. row_ptr[r+1]), at columns col[...]. Built once per matrix (sparse_backprop.csr_index).
//  2. Tokens in tiles of up to 48 (3 vectors of 16 floats; a sentence of 25 takes 2). Each thread
//     copies its tile of x transposed into a small buffer, xt[c] = the tile's values of input c,
//     contiguous (48 floats: 3 cache lines), so the tile stays in the core's own cache.
//  3. For each output row r, the tile's sums are vector accumulators (one AVX-512 register per 16
//     floats; the compiler splits them into AVX2 or NEON registers where those are what there is):
//     each kept weight is 3 vector loads of xt[c_k] and 3 vector multiply-adds. Every load feeds a
//     full-width FMA, and a weight and its column are read once per tile, not once per token. Two
//     sets of accumulators take alternate weights, so that one FMA need not wait for the last.
//  4. Sixteen rows' sums go to a small buffer, then into y one token at a time: 16 consecutive
//     floats of y's row, one cache line. (Written one sum at a time down y's column, every store
//     would touch another line and another page, and the kernel lost to dense on 1536 wide rows.)
//  5. Threads split the tiles (and, for one sentence, which is one tile, the rows too).
// So the work is nnz · T multiply-adds, vectorised across tokens, plus a transposed copy of x per
// tile and one of y per 16 rows: no copy of the whole activation matrix, no scatter, no atomics.
//
// Built by torch.utils.cpp_extension on first use (sparse_inference.py's `tiled_kernel`, -O3 -march=native:
// the vectors this CPU has); its threads are torch's own (at::parallel_for, torch.set_num_threads).
// Checked against the dense masked product to 1e-5 (tests/test_sparse_kernel.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

constexpr int64_t V = 16;              // floats per vector: 64 bytes
constexpr int64_t ROWS = 16;           // rows whose sums are written into y together
typedef float vec __attribute__((vector_size(V * sizeof(float))));   // GCC/Clang vector extension

// xt[c][i] = x[t0 + i][c] for the tile's n tokens, 0 for the rest of the tile's Q * V places.
template <int Q>
static void load_tile(const float* x, int64_t t0, int64_t n, int64_t in, float* xt) {
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < in; ++c) xt[c * Q * V + i] = x[(t0 + i) * in + c];
    for (int64_t c = 0; n < Q * V && c < in; ++c) std::fill(xt + c * Q * V + n, xt + (c + 1) * Q * V, 0.0f);
}

// sums[q] = Σ_k val[k] · xt[col[k]][q]: row r's sums over the tile, in registers.
template <int Q>
static void row_sums(const vec* xt, const int32_t* col, const float* val, int32_t k, int32_t end, vec* sums) {
    vec a[Q] = {}, b[Q] = {};                          // two sets: alternate weights, independent FMAs
    for (; k + 1 < end; k += 2) {
        const vec* x0 = xt + int64_t(col[k]) * Q;
        const vec* x1 = xt + int64_t(col[k + 1]) * Q;
        for (int q = 0; q < Q; ++q) {
            a[q] += val[k] * x0[q];
            b[q] += val[k + 1] * x1[q];
        }
    }
    if (k < end)
        for (int q = 0; q < Q; ++q) a[q] += val[k] * xt[int64_t(col[k]) * Q + q];
    for (int q = 0; q < Q; ++q) sums[q] = a[q] + b[q];
}

template <int Q>
static void tiled(const float* x, const int32_t* row_ptr, const int32_t* col, const float* val, const float* bias,
                  float* y, int64_t T, int64_t in, int64_t out) {
    constexpr int64_t TILE = Q * V;
    const int64_t tiles = (T + TILE - 1) / TILE;
    const int64_t parts = std::max<int64_t>(1, (at::get_num_threads() + tiles - 1) / tiles);   // rows split, if few tiles
    const int64_t rows = ((out + parts - 1) / parts + ROWS - 1) / ROWS * ROWS;
    at::parallel_for(0, tiles * parts, 1, [&](int64_t begin, int64_t end) {
        std::vector<vec> xt(in * Q), block(ROWS * Q);  // this thread's tile of x, and of 16 rows' sums
        int64_t loaded = -1;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t tile = item / parts, t0 = tile * TILE, n = std::min(TILE, T - t0);
            if (tile != loaded)
                load_tile<Q>(x, t0, n, in, reinterpret_cast<float*>(xt.data())), loaded = tile;
            const int64_t r0 = (item % parts) * rows, r1 = std::min(out, r0 + rows);
            for (int64_t rb = r0; rb < r1; rb += ROWS) {
                const int64_t m = std::min(r1 - rb, ROWS);
                for (int64_t j = 0; j < m; ++j) {
                    row_sums<Q>(xt.data(), col, val, row_ptr[rb + j], row_ptr[rb + j + 1], &block[j * Q]);
                    for (int q = 0; q < Q; ++q) block[j * Q + q] += bias ? bias[rb + j] : 0.0f;
                }
                const float* sums = reinterpret_cast<const float*>(block.data());   // [row j][token i]
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t j = 0; j < m; ++j) y[(t0 + i) * out + rb + j] = sums[j * TILE + i];
            }
        }
    });
}

torch::Tensor forward(torch::Tensor x, torch::Tensor row_ptr, torch::Tensor col, torch::Tensor val,
                      torch::Tensor bias) {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
                "x must be a contiguous float32 (T, in) matrix");
    TORCH_CHECK(row_ptr.scalar_type() == torch::kInt32 && col.scalar_type() == torch::kInt32 &&
                val.scalar_type() == torch::kFloat32, "the CSR index must be int32 and its values float32");
    TORCH_CHECK(row_ptr.is_contiguous() && col.is_contiguous() && val.is_contiguous() && col.numel() == val.numel(),
                "the CSR index must be contiguous, with one column index per value");
    TORCH_CHECK(bias.numel() == 0 || (bias.numel() == row_ptr.numel() - 1 && bias.scalar_type() == torch::kFloat32 &&
                bias.is_contiguous()), "the bias must be empty, or float32 with one value per row");
    const int64_t T = x.size(0), in = x.size(1), out = row_ptr.numel() - 1;
    auto y = torch::empty({T, out}, x.options());
    const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
    auto run = [&](auto kernel) {
        kernel(x.data_ptr<float>(), row_ptr.data_ptr<int32_t>(), col.data_ptr<int32_t>(), val.data_ptr<float>(), b,
               y.data_ptr<float>(), T, in, out);
    };
    if (T <= V) run(tiled<1>);                          // the fewest vectors that hold a short batch
    else if (T <= 2 * V) run(tiled<2>);
    else run(tiled<3>);
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "y = x W^T + b, W in CSR (row_ptr, col, val), x float32 (T, in)");
}
