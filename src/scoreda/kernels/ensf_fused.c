/* The EnSF's Euler–Maruyama integration (scoreda.filters.ensf.integrator) for point standardisation
 * and a diagonal linear likelihood, fused: the counter noise and every pseudo-time step of a column
 * block in one pass, z and the members kept in cache.
 *
 * Per element (sample i, state index j) and step k, with per-index mean m, std s, likelihood
 * ∇ₓ log p = v − w x (w = curvature, 0 where unobserved) and x̃ the prior term (paired: the
 * standardised member; mixture: Σ_j w_ij x̃_j, given per step):
 *
 *   Δz = Δt (σ² [(α x̃ − z)/β² + h s (v − w (m + s z))] − b z) + √Δt σ ξ,   z ← z + Δz / (1 + Δt σ² h w s²)
 *
 * which is affine in z: z ← z + P + Q z + A x̃ + S ξ with P, Q, A, S per index and step (shared by the
 * m samples of a block, so their cost is amortised over the rows).
 *
 * Noise ξ_s(i, j), s = 0 … n (s = 0 the initial z, step k uses s = k + 1), a pure function of
 * (key, s, global sample i, global index j): with q = ⌊s/2⌋ and the SplitMix64 counter hash of
 * scoreda.seeding (row seed b = mix(k_q + (i+1)γ), k_q = mix(mix(key) + (q+1)γ); h = mix(b + (j+1)γ)),
 * u₁ = (h[40:64] + 1) 2⁻²⁴, u₂ = h[16:40] 2⁻²⁴, ρ = √(−2 ln u₁):  ξ = ρ cos 2πu₂ for even s,
 * ρ sin 2πu₂ for odd s (both halves of Box–Muller: one hash, log and sin/cos for two steps). ln and
 * sin/cos are polynomials in float32 (relative error ≲ 2⁻²²), so the loops vectorise; the same
 * operations on every element, so the numbers do not depend on how the state is cut.
 *
 * Compiled without -ffast-math and with -ffp-contract=off: vector and scalar code give the same bits.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GAMMA 0x9E3779B97F4A7C15ULL
#define CHUNK 256 /* columns of one cache block */

static inline uint64_t mix64(uint64_t v) {
    v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9ULL;
    v = (v ^ (v >> 27)) * 0x94D049BB133111EBULL;
    return v ^ (v >> 31);
}

/* The row seed b = mix(k_q + (i+1)γ) of noise pair q for global sample i. */
uint64_t scoreda_row_seed(uint64_t key, int64_t q, int64_t i) {
    uint64_t kq = mix64(mix64(key) + (uint64_t)(q + 1) * GAMMA);
    return mix64(kq + (uint64_t)(i + 1) * GAMMA);
}

static inline float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* ρ = √(−2 ln u), u = k 2⁻²⁴, k ∈ [1, 2²⁴]: u = 2ᵉ μ with μ ∈ [√½, √2), ln μ = 2 atanh t,
 * t = (μ − 1)/(μ + 1), |t| ≤ 0.172, odd series to t⁹ (next term < 4e-10). */
static inline float radius(uint32_t k) {
    float u = (float)k * 0x1p-24f;
    uint32_t bits = as_bits(u);
    int32_t e = (int32_t)((bits >> 23) & 0xff) - 127;
    float mu = as_float((bits & 0x007fffffu) | 0x3f800000u); /* [1, 2) */
    int big = mu > 1.41421356f;
    mu = big ? 0.5f * mu : mu;
    e += big;
    float t = (mu - 1.0f) / (mu + 1.0f), t2 = t * t;
    float p = 2.0f / 9.0f;
    p = p * t2 + 2.0f / 7.0f;
    p = p * t2 + 2.0f / 5.0f;
    p = p * t2 + 2.0f / 3.0f;
    p = p * t2 + 2.0f;
    float fe = (float)e;
    float ln = fe * 0.693145752f + (p * t + fe * 1.42860677e-06f); /* ln 2 split in two */
    float r2 = -2.0f * ln;
    return sqrtf(r2 > 0.0f ? r2 : 0.0f);
}

/* (cos 2πu, sin 2πu), u = k 2⁻²⁴, k ∈ [0, 2²⁴): quadrant n = round(4u) mod 4, θ = 2π(u − n/4) ∈
 * [−π/4, π/4) exactly reduced in integers; Taylor to θ¹⁰ / θ⁹ (error < 3e-8), then rotated by n. */
static inline void cos_sin(uint32_t k, float *c_out, float *s_out) {
    uint32_t n = (k + (1u << 21)) >> 22;
    int32_t rem = (int32_t)k - (int32_t)(n << 22);
    float th = (float)rem * (float)(6.283185307179586 * 0x1p-24), t2 = th * th;
    float c = -1.0f / 3628800.0f;
    c = c * t2 + 1.0f / 40320.0f;
    c = c * t2 - 1.0f / 720.0f;
    c = c * t2 + 1.0f / 24.0f;
    c = c * t2 - 0.5f;
    c = c * t2 + 1.0f;
    float s = 1.0f / 362880.0f;
    s = s * t2 - 1.0f / 5040.0f;
    s = s * t2 + 1.0f / 120.0f;
    s = s * t2 - 1.0f / 6.0f;
    s = s * t2 * th + th;
    n &= 3u;
    float cs = (n & 1u) ? -s : c, sn = (n & 1u) ? c : s; /* rotate by n π/2 */
    *c_out = (n & 2u) ? -cs : cs;
    *s_out = (n & 2u) ? -sn : sn;
}

/* Both normals of pair q for one row of a block: cos half into xc, sin half into xs, [w]. */
static void normals(uint64_t b, int64_t j0, int64_t w, float *restrict xc, float *restrict xs) {
    for (int64_t j = 0; j < w; j++) {
        uint64_t h = mix64(b + (uint64_t)(j0 + j + 1) * GAMMA);
        float r = radius((uint32_t)((h >> 40) & 0xFFFFFFu) + 1u), c, s;
        cos_sin((uint32_t)((h >> 16) & 0xFFFFFFu), &c, &s);
        xc[j] = r * c;
        xs[j] = r * s;
    }
}

/* Step table: per step k, [a, 1/β², b, σ², Δt, h, √Δt σ] (float64). */
enum { T_A, T_IB2, T_B, T_G2, T_DT, T_H, T_SQ, T_N };

/* P, Q, A, S [wdt] of the step with table row t on the indices c0 … c0 + wdt − 1 (see the header). */
static void coefficients(const double *t, int64_t c0, int64_t wdt, const float *mean, const float *std,
                         const float *v, const float *w, int implicit, float *P, float *Q, float *A,
                         float *S) {
    float a = (float)t[T_A], ib2 = (float)t[T_IB2], b = (float)t[T_B], g2 = (float)t[T_G2];
    float dt = (float)t[T_DT], hh = (float)t[T_H], sq = (float)t[T_SQ];
    float dg = dt * g2;
    int lik = v != NULL && hh > 0.0f;
    for (int64_t j = 0; j < wdt; j++) {
        float sd = std[c0 + j];
        float ww = lik ? w[c0 + j] : 0.0f, vv = lik ? v[c0 + j] : 0.0f;
        float hs = hh * sd;
        float den = (implicit && lik) ? 1.0f / (1.0f + dg * hh * ww * sd * sd) : 1.0f;
        P[j] = dg * hs * (vv - ww * mean[c0 + j]) * den;
        Q[j] = (-dg * ib2 - dg * hs * ww * sd - dt * b) * den;
        A[j] = dg * a * ib2 * den;
        S[j] = sq * den;
    }
}

/* Noise steps s0 ≤ s < s1 on samples (global rows i0 … i0+m−1) × state indices (global j0 … j0+c−1):
 * s = 0 sets z = ξ₀, s ≥ 1 is step k = s − 1 of ``table``. z [m, c] (row stride ldz) in place, xt
 * [m, c] (stride ldx) the prior term, mean/std [c], v/w [c] the likelihood (v = NULL: none).
 * Returns 0, or 1 when scratch memory cannot be had. */
int scoreda_ensf_steps(int64_t m, int64_t c, int64_t i0, int64_t j0, float *z, int64_t ldz,
                       const float *xt, int64_t ldx, const float *mean, const float *std,
                       const float *v, const float *w, uint64_t key, int64_t s0, int64_t s1,
                       const double *table, int implicit, int threads) {
    int64_t nchunk = (c + CHUNK - 1) / CHUNK;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : failed)
#endif
    {
    float *odd = malloc((size_t)(m > 0 ? m : 1) * CHUNK * sizeof(float)); /* sin halves, per row */
    failed = odd == NULL;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t ch = 0; ch < nchunk; ch++) {
        if (odd == NULL) continue;
        int64_t c0 = ch * CHUNK, wdt = c - c0 < CHUNK ? c - c0 : CHUNK;
        float P[CHUNK], Q[CHUNK], A[CHUNK], S[CHUNK], xc[CHUNK];
        if (s0 == 0) { /* z = ξ₀, the cos half of pair 0; its sin half is ξ₁ */
            for (int64_t i = 0; i < m; i++)
                normals(scoreda_row_seed(key, 0, i0 + i), j0 + c0, wdt, z + i * ldz + c0, odd + i * CHUNK);
        }
        for (int64_t s = s0 > 0 ? s0 : 1; s < s1; s++) {
            coefficients(table + (s - 1) * T_N, c0, wdt, mean, std, v, w, implicit, P, Q, A, S);
            for (int64_t i = 0; i < m; i++) {
                float *zi = z + i * ldz + c0, *xs = odd + i * CHUNK;
                const float *xi = xt + i * ldx + c0, *xi_n = xs;
                /* a pair is drawn at its even s, its sin half kept for s + 1; a range that starts at
                 * an odd s draws its pair again */
                if (s % 2 == 0 || s == s0) normals(scoreda_row_seed(key, s / 2, i0 + i), j0 + c0, wdt, xc, xs);
                if (s % 2 == 0) xi_n = xc;
                for (int64_t j = 0; j < wdt; j++)
                    zi[j] = zi[j] + (P[j] + Q[j] * zi[j] + A[j] * xi[j] + S[j] * xi_n[j]);
            }
        }
    }
    free(odd);
    }
    return failed;
}

/* One step s ≥ 1 of the mixture score: the prior term of sample i is Σ_k wts[i, k] x̃_k (x̃ [M, c]
 * float32, stride ldx; wts [m, M] float64, used in float32: a convex combination), then z is stepped
 * as above, and with G ≠ NULL the next step's G[i, k] = Σ_j z_ij x̃_kj [m, M] over these c indices is
 * returned: float32 products summed in 16 lanes over a block of ≤ 256 indices, the blocks' sums in
 * float64 (per thread, then in thread order). Returns 0, or 1 when scratch memory cannot be had. */
int scoreda_ensf_mixture_step(int64_t m, int64_t M, int64_t c, int64_t i0, int64_t j0, float *z,
                              int64_t ldz, const float *x, int64_t ldx, const double *wts,
                              const float *mean, const float *std, const float *v, const float *w,
                              uint64_t key, int64_t s, const double *table, int implicit, double *G,
                              int threads) {
    int64_t nchunk = (c + CHUNK - 1) / CHUNK;
    int nt = threads > 0 ? threads : 1, failed = 0;
    double *parts = calloc((size_t)nt * (size_t)(m * M > 0 ? m * M : 1), sizeof(double));
    if (parts == NULL) return 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(| : failed)
#endif
    {
    int me = 0;
#ifdef _OPENMP
    me = omp_get_thread_num();
#endif
    double *g = parts + (size_t)me * (size_t)(m * M);
    float *acc = malloc((size_t)(M > 0 ? M : 1) * 16 * sizeof(float));
    if (acc == NULL) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t ch = 0; ch < nchunk; ch++) {
        if (acc == NULL) continue;
        int64_t c0 = ch * CHUNK, wdt = c - c0 < CHUNK ? c - c0 : CHUNK;
        float P[CHUNK], Q[CHUNK], A[CHUNK], S[CHUNK], xc[CHUNK], xs[CHUNK], pm[CHUNK];
        coefficients(table + (s - 1) * T_N, c0, wdt, mean, std, v, w, implicit, P, Q, A, S);
        for (int64_t i = 0; i < m; i++) {
            float *zi = z + i * ldz + c0;
            for (int64_t j = 0; j < wdt; j++) pm[j] = 0.0f;
            for (int64_t k = 0; k < M; k++) {
                const float *xk = x + k * ldx + c0;
                float wk = (float)wts[i * M + k];
                for (int64_t j = 0; j < wdt; j++) pm[j] = fmaf(wk, xk[j], pm[j]);
            }
            normals(scoreda_row_seed(key, s / 2, i0 + i), j0 + c0, wdt, xc, xs);
            const float *xi_n = (s % 2 == 0) ? xc : xs;
            for (int64_t j = 0; j < wdt; j++)
                zi[j] = zi[j] + (P[j] + Q[j] * zi[j] + A[j] * pm[j] + S[j] * xi_n[j]);
            if (G == NULL) continue;
            /* G[i, k] over this block: lanes acc[k][l] hold the products of the indices j ≡ l mod 16 */
            for (int64_t e = 0; e < M * 16; e++) acc[e] = 0.0f;
            int64_t j = 0;
            for (; j + 16 <= wdt; j += 16)
                for (int64_t k = 0; k < M; k++)
                    for (int l = 0; l < 16; l++)
                        acc[k * 16 + l] = fmaf(zi[j + l], x[k * ldx + c0 + j + l], acc[k * 16 + l]);
            for (; j < wdt; j++)
                for (int64_t k = 0; k < M; k++)
                    acc[k * 16 + j % 16] = fmaf(zi[j], x[k * ldx + c0 + j], acc[k * 16 + j % 16]);
            for (int64_t k = 0; k < M; k++) {
                float *a = acc + k * 16;
                double sum = (((double)a[0] + a[1]) + ((double)a[2] + a[3])) + (((double)a[4] + a[5]) + ((double)a[6] + a[7]));
                sum += (((double)a[8] + a[9]) + ((double)a[10] + a[11])) + (((double)a[12] + a[13]) + ((double)a[14] + a[15]));
                g[i * M + k] += sum;
            }
        }
    }
    free(acc);
    }
    if (G != NULL) {
        for (int64_t e = 0; e < m * M; e++) {
            double sum = 0.0;
            for (int t = 0; t < nt; t++) sum += parts[(size_t)t * (size_t)(m * M) + e];
            G[e] = sum;
        }
    }
    free(parts);
    return failed;
}
