/* One damped parallel step of re-weighted Gaussian min-sum on a tile of T grid rows
 * (scoreda.filters.gmrf_mp; the torch form is GMRFMessagePassing.step_torch).
 *
 * Messages are stored at their receivers: a[m, e, l, y, x] is the message into (l, y, x) from its
 * neighbour at offset −o_e, o_e = (dl, dy, dx). For every sender i = (l, y, x) and offset e, with
 * S_a = Σ_e a[e](i), S_b = Σ_e b[e](i), r = rev[e] (the offset −o_e) and g_e = Γ_ij / c:
 *
 *   A = γ(i) + c S_a − a[r](i),   B = h(i) + c S_b − b[r](i),   a' = −g_e² / A,   b' = −g_e B / A,
 *
 * and the receiver j = ((l + dl) mod C, y + dy, (x + dx) mod W) gets a_new[e](j) = (1 − λ) a[e](j) + λ a'
 * (b alike). A receiver outside the tile's rows gets the raw a', b' through a send buffer: offsets
 * with dy > 0 write their last dy rows to `down` (layout per member: for each such offset in order,
 * [C, dy, W] at the sender's x), dy < 0 their first −dy rows to `up`; the caller delivers what the
 * neighbours send. The a's are per member (Ma = Mb) or shared (Ma = 1). The same operations on
 * every point whatever the tile: any split of the rows gives the same numbers.
 *
 * Compiled without -ffast-math and with -ffp-contract=off; gmrf_mp_step_f64 and gmrf_mp_step_f32
 * (messages, γ, h and the sums in float32: half the memory traffic) are the same code.
 */
#include <stdint.h>
#include <stdlib.h>

static inline int64_t wrap(int64_t v, int64_t n) { return v < 0 ? v + n : (v >= n ? v - n : v); }

/* the step in one precision: REAL the float type, STEP and DELIVER the names to define */
#define DEFINE_STEP(REAL, STEP, DELIVER) \
                                                                                                                       \
/* receiver row of sender row y for the output; writes one row of values at the sender's x */                          \
static void DELIVER(REAL *restrict dst_new, const REAL *restrict dst_old, REAL *restrict buf,                          \
                    const REAL *restrict val, int64_t W, int64_t dx, REAL lam, int in_tile) {                          \
    if (!in_tile) {                                                                                                    \
        for (int64_t x = 0; x < W; x++) buf[x] = val[x];                                                               \
        return;                                                                                                        \
    }                                                                                                                  \
    const REAL keep = 1 - lam;                                                                                         \
    int64_t s = wrap(dx % W, W); /* receivers x + dx: [s, W) from x in [0, W − s), then [0, s) */                      \
    for (int64_t x = 0; x < W - s; x++) dst_new[x + s] = keep * dst_old[x + s] + lam * val[x];                         \
    for (int64_t x = W - s; x < W; x++) dst_new[x + s - W] = keep * dst_old[x + s - W] + lam * val[x];                 \
}                                                                                                                      \
                                                                                                                       \
int STEP(int64_t Mb, int64_t Ma, int64_t E, int64_t C, int64_t T, int64_t W,                                           \
                 const int64_t *off,        /* [E, 3]: dl, dy, dx */                                                   \
                 const int64_t *rev,        /* [E] */                                                                  \
                 const int64_t *first_down, /* [E]: start of offset e in a member's `down` block (−1: none) */         \
                 const int64_t *first_up,   /* [E] */                                                                  \
                 int64_t n_down, int64_t n_up, /* values per member in the send buffers */                             \
                 const REAL *g,           /* [E, C]: Γ_ij / c at the sender's level */                                 \
                 double c_, double lam_,                                                                               \
                 const REAL *gamma,       /* [Ma, C, T, W] */                                                          \
                 const REAL *h,           /* [Mb, C, T, W] */                                                          \
                 const REAL *a, const REAL *b, /* [Ma | Mb, E, C, T, W] */                                             \
                 REAL *a_new, REAL *b_new,                                                                             \
                 REAL *a_down, REAL *a_up, REAL *b_down, REAL *b_up) {                                                 \
    const REAL c = (REAL)c_, lam = (REAL)lam_;                                                                         \
    const int64_t plane = T * W, field = C * plane, block = E * field;                                                 \
    int fail = 0;                                                                                                      \
_Pragma("omp parallel")                                                                                                   \
    {                                                                                                                  \
        REAL *tmp = malloc(sizeof(REAL) * (size_t)(W * (E + 3)));                                                      \
        if (!tmp) {                                                                                                    \
_Pragma("omp atomic write")                                                                                               \
            fail = 1;                                                                                                  \
        } else {                                                                                                       \
            REAL *inv = tmp, *sum = tmp + E * W, *val = tmp + (E + 1) * W, *base = tmp + (E + 2) * W;                  \
_Pragma("omp for schedule(static)")                                                                                       \
            for (int64_t ly = 0; ly < C * T; ly++) {                                                                   \
                const int64_t l = ly / T, y = ly % T, at = l * plane + y * W;                                          \
                for (int64_t ma = 0; ma < Ma; ma++) {                                                                  \
                    const REAL *am = a + ma * block;                                                                   \
                    for (int64_t x = 0; x < W; x++) sum[x] = 0;                                                        \
                    for (int64_t e = 0; e < E; e++)                                                                    \
                        for (int64_t x = 0; x < W; x++) sum[x] += am[e * field + at + x];                              \
                    const REAL *gm = gamma + ma * field + at;                                                          \
                    for (int64_t x = 0; x < W; x++) base[x] = gm[x] + c * sum[x];                                      \
                    for (int64_t e = 0; e < E; e++) {                                                                  \
                        const REAL ge = g[e * C + l], g2 = ge * ge;                                                    \
                        const REAL *ar = am + rev[e] * field + at;                                                     \
                        REAL *ie = inv + e * W;                                                                        \
                        for (int64_t x = 0; x < W; x++) {                                                              \
                            ie[x] = (REAL)1 / (base[x] - ar[x]);                                                       \
                            val[x] = -g2 * ie[x];                                                                      \
                        }                                                                                              \
                        const int64_t dl = off[3 * e], dy = off[3 * e + 1], dx = off[3 * e + 2];                       \
                        const int64_t yr = y + dy, lr = (l + dl) % C;                                                  \
                        const int64_t dst = ma * block + e * field + lr * plane + (yr >= 0 && yr < T ? yr : 0) * W;    \
                        REAL *buf = yr >= T ? a_down + ma * n_down + first_down[e] + (l * dy + yr - T) * W             \
                                    : yr < 0  ? a_up + ma * n_up + first_up[e] + (l * -dy + y) * W                     \
                                              : NULL;                                                                  \
                        DELIVER(a_new + dst, a + dst, buf, val, W, dx, lam, buf == NULL);                              \
                    }                                                                                                  \
                    /* the b's of every member that uses these a's */                                                  \
                    const int64_t m0 = Ma == 1 ? 0 : ma, m1 = Ma == 1 ? Mb : ma + 1;                                   \
                    for (int64_t m = m0; m < m1; m++) {                                                                \
                        const REAL *bm = b + m * block;                                                                \
                        for (int64_t x = 0; x < W; x++) sum[x] = 0;                                                    \
                        for (int64_t e = 0; e < E; e++)                                                                \
                            for (int64_t x = 0; x < W; x++) sum[x] += bm[e * field + at + x];                          \
                        const REAL *hm = h + m * field + at;                                                           \
                        for (int64_t x = 0; x < W; x++) base[x] = hm[x] + c * sum[x];                                  \
                        for (int64_t e = 0; e < E; e++) {                                                              \
                            const REAL ge = g[e * C + l];                                                              \
                            const REAL *br = bm + rev[e] * field + at, *ie = inv + e * W;                              \
                            for (int64_t x = 0; x < W; x++) val[x] = -ge * (base[x] - br[x]) * ie[x];                  \
                            const int64_t dl = off[3 * e], dy = off[3 * e + 1], dx = off[3 * e + 2];                   \
                            const int64_t yr = y + dy, lr = (l + dl) % C;                                              \
                            const int64_t dst = m * block + e * field + lr * plane + (yr >= 0 && yr < T ? yr : 0) * W; \
                            REAL *buf = yr >= T ? b_down + m * n_down + first_down[e] + (l * dy + yr - T) * W          \
                                        : yr < 0  ? b_up + m * n_up + first_up[e] + (l * -dy + y) * W                  \
                                                  : NULL;                                                              \
                            DELIVER(b_new + dst, b + dst, buf, val, W, dx, lam, buf == NULL);                          \
                        }                                                                                              \
                    }                                                                                                  \
                }                                                                                                      \
            }                                                                                                          \
            free(tmp);                                                                                                 \
        }                                                                                                              \
    }                                                                                                                  \
    return fail;                                                                                                       \
}

DEFINE_STEP(double, gmrf_mp_step_f64, deliver_f64)
DEFINE_STEP(float, gmrf_mp_step_f32, deliver_f32)
