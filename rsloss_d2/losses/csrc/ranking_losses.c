/* RS, aLRP and AP Loss, forward + identity-update gradient, in one call each (CPU).
 *
 * The same algorithm as the PyTorch path (../_step_sums.py): the smoothed step
 * H(x) = clamp(x / (2 delta) + 1/2, 0, 1) (delta = 0: 1[x >= 0]) summed through the 2P sorted
 * breakpoints c_i -/+ delta of the positives' logits c_i, so every sum over the negatives is a
 * difference of prefix sums over bins and every negative's gradient is A[k] + B[k] x on its
 * bin k. Papers: RS Loss (Oksuz et al., ICCV 2021) Eq. 6-12; aLRP Loss (Oksuz et al., NeurIPS
 * 2020) Sec. 4, Alg. 1; AP Loss (Chen et al., CVPR 2019) Eq. 5-9, Alg. 1; the official loops are
 * the `forward` of RankSort / aLRPLoss / APLoss in mmdet/models/losses/ranking_losses.py of the
 * RankSortLoss and aLRPLoss repositories.
 *
 * Everything is accumulated in double whatever the input dtype (float32 or float64). No
 * allocation of P x N; the RS positive-positive sums (IoU-ordered) are a P x P pass over the
 * positives sorted by logit, skipping the pairs with H = 0.
 *
 * The passes over all M entries run on `threads` OpenMP threads (when built with OpenMP and M is
 * large), each with its own bin sums added up in thread order: deterministic for a given
 * number of threads.
 *
 * Return codes: 0 ok, 1 NaN/Inf among the logits, 2 loc_errors size mismatch (aLRP), 3 out of
 * memory. Outputs: `grad` (M,) in the input dtype, `out` the loss values in the input dtype,
 * `*num_pos` the number of positives.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

/* Below this many entries a pass runs on one thread (a parallel region costs microseconds). */
#define PARALLEL_MIN 65536
/* ... and below this many positives the RS positive-pair passes. */
#define PAIRS_PARALLEL_MIN 256

typedef struct {
    double c;   /* logit */
    int64_t i;  /* rank of the positive in order of appearance */
    int64_t at; /* index in the flat input */
} Pos;

static inline double load(const void *p, int64_t k, int f64) {
    return f64 ? ((const double *)p)[k] : (double)((const float *)p)[k];
}

static inline void store(void *p, int64_t k, double v, int f64) {
    if (f64)
        ((double *)p)[k] = v;
    else
        ((float *)p)[k] = (float)v;
}

static int cmp_pos(const void *a, const void *b) {
    const Pos *x = (const Pos *)a, *y = (const Pos *)b;
    if (x->c < y->c) return -1;
    if (x->c > y->c) return 1;
    return (x->i > y->i) - (x->i < y->i); /* stable: ties in order of appearance */
}

/* #{k : b[k] <= v} over the sorted b[lo..hi) plus lo */
static inline int64_t upper_bound(const double *b, int64_t lo, int64_t hi, double v) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (b[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A grid cell: the breakpoints below it, how many it holds and the first of them (+inf if
 * none), in one 16-byte load. */
typedef struct {
    double edge;
    int32_t below, n;
} Cell;

/* Sorted breakpoints and a uniform grid over them that bins a point in O(1) expected. */
typedef struct {
    int64_t K;      /* number of breakpoints */
    double *b;      /* (K,) ascending */
    int64_t *tag;   /* (K,) sorted positive r for c_r - delta (or c_r if delta = 0), r + P for c_r + delta */
    int64_t G;      /* grid cells */
    double lo, inv_w;
    Cell *cells;    /* (G,) */
} Bins;

static inline int64_t cell_of(const Bins *B, double x) {
    double u = (x - B->lo) * B->inv_w;
    if (!(u >= 0)) return 0; /* also NaN (x = lo with an infinite inv_w) */
    if (u >= (double)(B->G - 1)) return B->G - 1;
    return (int64_t)u;
}

/* bin of x: the number of breakpoints <= x. Most cells (4 per breakpoint) hold at most one
 * breakpoint: one load and one comparison. */
static inline int64_t bin_of(const Bins *B, double x) {
    if (!(x >= B->b[0])) return 0;
    if (x >= B->b[B->K - 1]) return B->K;
    const Cell c = B->cells[cell_of(B, x)];
    if (c.n <= 1) return c.below + (c.edge <= x);
    return upper_bound(B->b, c.below, (int64_t)c.below + c.n, x);
}

static void bins_free(Bins *B) {
    free(B->b);
    free(B->tag);
    free(B->cells);
}

/* pos sorted by logit; delta > 0: the 2P breakpoints c - delta, c + delta; delta = 0: the P c. */
static int bins_make(Bins *B, const Pos *pos, int64_t P, double delta) {
    int64_t K = delta > 0 ? 2 * P : P;
    memset(B, 0, sizeof(*B));
    B->K = K;
    B->G = 4 * K;
    B->b = (double *)malloc(sizeof(double) * K);
    B->tag = (int64_t *)malloc(sizeof(int64_t) * K);
    B->cells = (Cell *)malloc(sizeof(Cell) * B->G);
    if (!B->b || !B->tag || !B->cells) return 3;
    if (delta > 0) {
        int64_t i = 0, j = 0, k = 0;
        while (k < K) {
            double lo = i < P ? pos[i].c - delta : INFINITY;
            double hi = j < P ? pos[j].c + delta : INFINITY;
            if (i < P && lo <= hi) {
                B->b[k] = lo;
                B->tag[k++] = i++;
            } else {
                B->b[k] = hi;
                B->tag[k++] = P + j++;
            }
        }
    } else {
        for (int64_t k = 0; k < K; ++k) {
            B->b[k] = pos[k].c;
            B->tag[k] = k;
        }
    }
    B->lo = B->b[0];
    double span = B->b[K - 1] - B->b[0];
    B->inv_w = span > 0 ? (double)B->G / span : 0.0;
    for (int64_t g = 0; g < B->G; ++g) {
        B->cells[g].edge = INFINITY;
        B->cells[g].below = 0;
        B->cells[g].n = 0;
    }
    for (int64_t k = 0; k < K; ++k) { /* ascending b: a cell's first breakpoint comes first */
        Cell *c = &B->cells[cell_of(B, B->b[k])];
        if (c->n++ == 0) {
            c->edge = B->b[k];
            c->below = (int32_t)k;
        }
    }
    int32_t below = 0; /* cells without breakpoints: all those below them */
    for (int64_t g = 0; g < B->G; ++g) {
        if (B->cells[g].n == 0)
            B->cells[g].below = below;
        else
            below = B->cells[g].below + B->cells[g].n;
    }
    return 0;
}

/* Count the positives, check the logits, and collect the positives sorted by logit.
 * binary: positives are t == 1 (aLRP, AP), else t > 0 (RS). */
static int collect(const void *s, const void *t, int64_t M, int f64, int binary, int threads,
                   Pos **out, int64_t *P_out) {
    int64_t P = 0;
    int finite = 1;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : P) \
    reduction(& : finite) if (M >= PARALLEL_MIN)
    for (int64_t k = 0; k < M; ++k) {
        double x = load(s, k, f64), y = load(t, k, f64);
        finite &= isfinite(x) != 0;
        P += binary ? (y == 1.0) : (y > 0.0);
    }
    *P_out = P;
    if (!finite) return 1;
    *out = NULL;
    if (P == 0) return 0;
    Pos *pos = (Pos *)malloc(sizeof(Pos) * P);
    if (!pos) return 3;
    int64_t r = 0;
    for (int64_t k = 0; k < M; ++k) {
        double y = load(t, k, f64);
        if (binary ? (y == 1.0) : (y > 0.0)) {
            pos[r].c = load(s, k, f64);
            pos[r].i = r;
            pos[r].at = k;
            ++r;
        }
    }
    qsort(pos, P, sizeof(Pos), cmp_pos);
    *out = pos;
    return 0;
}

/* The negatives (t == 0): their bins (-1 elsewhere), and per bin their count and
 * sum of (x - ref) (bins 1..K-1 only: bins 0 and K never lie inside a window). */
static void bin_range(const Bins *B, const void *s, const void *t, int64_t begin, int64_t end,
                      int f64, double ref, int32_t *bin, double *cnt, double *sum) {
    for (int64_t k = begin; k < end; ++k) {
        if (load(t, k, f64) != 0.0) {
            bin[k] = -1;
            continue;
        }
        double x = load(s, k, f64);
        int64_t q = bin_of(B, x);
        bin[k] = (int32_t)q;
        cnt[q] += 1.0;
        if (q > 0 && q < B->K) sum[q] += x - ref;
    }
}

static int bin_negatives(const Bins *B, const void *s, const void *t, int64_t M, int f64,
                         double ref, int threads, int32_t *bin, double *cnt, double *sum) {
#ifdef _OPENMP
    if (threads > 1 && M >= PARALLEL_MIN) {
        int64_t width = B->K + 2;
        double *part = (double *)calloc((size_t)threads * 2 * width, sizeof(double));
        if (!part) return 3;
        int used = 1;
#pragma omp parallel num_threads(threads)
        {
            int tid = omp_get_thread_num(), n = omp_get_num_threads();
            int64_t begin = M * tid / n, end = M * (tid + 1) / n;
            double *c = part + (size_t)tid * 2 * width;
            bin_range(B, s, t, begin, end, f64, ref, bin, c, c + width);
            if (tid == 0) used = n;
        }
        for (int tid = 0; tid < used; ++tid) {
            const double *c = part + (size_t)tid * 2 * width;
            for (int64_t q = 0; q < width; ++q) {
                cnt[q] += c[q];
                sum[q] += c[width + q];
            }
        }
        free(part);
        return 0;
    }
#endif
    (void)threads;
    bin_range(B, s, t, 0, M, f64, ref, bin, cnt, sum);
    return 0;
}

/* In-place exclusive prefix sums: a[k] <- sum of a[0..k), a has n + 1 entries. */
static void prefix(double *a, int64_t n) {
    double run = 0.0;
    for (int64_t k = 0; k <= n; ++k) {
        double v = a[k];
        a[k] = run;
        run += v;
    }
}

/* Sum over the points of a table (prefix counts pc, prefix sums ps, both exclusive, K + 2
 * entries) of w H(x - c): full weight from the bin of c + delta on, the ramp inside the window. */
static inline double centre_sum(const Bins *B, const double *pc, const double *ps, double c,
                                double ref, double delta, double inv2d) {
    if (delta > 0) {
        int64_t a = upper_bound(B->b, 0, B->K, c - delta);
        int64_t h = upper_bound(B->b, 0, B->K, c + delta);
        double n_win = pc[h] - pc[a];
        double s_win = (ps[h] - ps[a]) - (c - ref) * n_win;
        return (pc[B->K + 1] - pc[h]) + s_win * inv2d + 0.5 * n_win;
    }
    int64_t h = upper_bound(B->b, 0, B->K, c);
    return pc[B->K + 1] - pc[h];
}

/* Per bin k (0..K) the gradient A[k] + B[k] (x - ref) of a point x in bin k:
 * sum_i w_i H(x - c_i) with w indexed by sorted positive. */
static void gradient_tables(const Bins *Bn, const Pos *pos, const double *w, int64_t P,
                            double ref, double delta, double inv2d, double *A, double *Bt) {
    double full = 0.0, w1 = 0.0, w2 = 0.0;
    int64_t open = 0;
    for (int64_t k = 0; k <= Bn->K; ++k) {
        if (delta > 0) {
            A[k] = full + 0.5 * w1 - w2 * inv2d;
            Bt[k] = w1 * inv2d;
        } else {
            A[k] = full;
            Bt[k] = 0.0;
        }
        if (k == Bn->K) break;
        int64_t tag = Bn->tag[k];
        if (delta > 0) {
            if (tag < P) { /* the ramp of positive tag starts */
                w1 += w[tag];
                w2 += w[tag] * (pos[tag].c - ref);
                ++open;
            } else { /* it ends: full weight from here on */
                int64_t r = tag - P;
                full += w[r];
                if (--open == 0) {
                    w1 = 0.0;
                    w2 = 0.0;
                } else {
                    w1 -= w[r];
                    w2 -= w[r] * (pos[r].c - ref);
                }
            }
        } else {
            full += w[tag];
        }
    }
}

/* The whole gradient but the positives' (written after): 0 for the positives and the ignored,
 * A[k] + B[k] (x - ref) for a negative in bin k (B is exactly 0 on bins 0 and K). */
static void negative_gradient(const int32_t *bin, const void *s, int64_t M, int f64,
                              const double *A, const double *Bt, double ref, double scale,
                              int threads, void *grad) {
#pragma omp parallel for num_threads(threads) schedule(static) if (M >= PARALLEL_MIN)
    for (int64_t k = 0; k < M; ++k) {
        int32_t q = bin[k];
        double g = 0.0;
        if (q >= 0) g = (A[q] + Bt[q] * (load(s, k, f64) - ref)) * scale;
        store(grad, k, g, f64);
    }
}

static void zero_grad(void *grad, int64_t M, int f64) {
    memset(grad, 0, (size_t)M * (f64 ? sizeof(double) : sizeof(float)));
}

typedef struct {
    Pos *pos;
    Bins B;
    int32_t *bin;
    double *cnt, *sum, *A, *Bt, *fp;
} Work;

static void work_free(Work *w) {
    free(w->pos);
    bins_free(&w->B);
    free(w->bin);
    free(w->cnt);
    free(w->sum);
    free(w->A);
    free(w->Bt);
    free(w->fp);
}

/* Common first half: positives, bins, the negatives binned, N_FP(i) per sorted positive. */
static int negatives_pass(const void *s, const void *t, int64_t M, int f64, int binary,
                          double delta, int threads, Work *w, int64_t *P_out, double *ref) {
    memset(w, 0, sizeof(*w));
    int rc = collect(s, t, M, f64, binary, threads, &w->pos, P_out);
    int64_t P = *P_out;
    if (rc || P == 0) return rc;
    if ((rc = bins_make(&w->B, w->pos, P, delta))) return rc;
    int64_t K = w->B.K;
    w->bin = (int32_t *)malloc(sizeof(int32_t) * (M > 0 ? M : 1));
    w->cnt = (double *)calloc(K + 2, sizeof(double));
    w->sum = (double *)calloc(K + 2, sizeof(double));
    w->A = (double *)malloc(sizeof(double) * (K + 1));
    w->Bt = (double *)malloc(sizeof(double) * (K + 1));
    w->fp = (double *)malloc(sizeof(double) * P);
    if (!w->bin || !w->cnt || !w->sum || !w->A || !w->Bt || !w->fp) return 3;
    /* sums of the raw x (as the PyTorch path): a shift such as x - min c would turn huge logits
     * (~1e38) in the never-summed first and last bins into huge values inside the windows */
    *ref = 0.0;
    if ((rc = bin_negatives(&w->B, s, t, M, f64, *ref, threads, w->bin, w->cnt, w->sum)))
        return rc;
    prefix(w->cnt, K + 1);
    prefix(w->sum, K + 1);
    double inv2d = delta > 0 ? 0.5 / delta : 0.0;
    for (int64_t r = 0; r < P; ++r)
        w->fp[r] = centre_sum(&w->B, w->cnt, w->sum, w->pos[r].c, *ref, delta, inv2d);
    return 0;
}

/* Sums over the positives as points, with per-positive weights wt (sorted order, NULL = 1):
 * out[r] = sum_j wt_j H(c_j - c_r), self term included (H(0) = 1/2). delta > 0. */
static int positive_sums(const Work *w, int64_t P, const double *wt, double ref, double delta,
                         double *out) {
    int64_t K = w->B.K;
    double *pc = (double *)calloc(K + 2, sizeof(double));
    double *ps = (double *)calloc(K + 2, sizeof(double));
    if (!pc || !ps) {
        free(pc);
        free(ps);
        return 3;
    }
    double inv2d = 0.5 / delta;
    for (int64_t j = 0; j < P; ++j) {
        double x = w->pos[j].c, u = wt ? wt[j] : 1.0;
        int64_t q = upper_bound(w->B.b, 0, K, x);
        pc[q] += u;
        if (q > 0 && q < K) ps[q] += u * (x - ref);
    }
    prefix(pc, K + 1);
    prefix(ps, K + 1);
    for (int64_t r = 0; r < P; ++r)
        out[r] = centre_sum(&w->B, pc, ps, w->pos[r].c, ref, delta, inv2d);
    free(pc);
    free(ps);
    return 0;
}

static inline double step(double x, double delta, double inv2d) {
    if (delta > 0) {
        double h = x * inv2d + 0.5;
        return h < 0 ? 0 : (h > 1 ? 1 : h);
    }
    return x >= 0 ? 1.0 : 0.0;
}

/* The first sorted positive j with H(c_j - c) > 0 (H grows with c_j). Found with H itself:
 * c - delta rounds to c for huge logits. */
static int64_t first_with_step(const Pos *pos, int64_t P, double c, double delta, double inv2d) {
    int64_t lo = 0, hi = P;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (step(pos[mid].c - c, delta, inv2d) > 0.0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The number of sorted positives r with H(c - c_r) > 0 (H shrinks as c_r grows). */
static int64_t count_with_step(const Pos *pos, int64_t P, double c, double delta, double inv2d) {
    int64_t lo = 0, hi = P;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (step(c - pos[mid].c, delta, inv2d) > 0.0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* What the binning gives a positive's own term H(c - c): 1/2, or 1 where c + delta rounds to c
 * (|c| above ~2^52 delta: the window [c - delta, c + delta) is empty). aLRP and AP replace the
 * self term by 1, so it is taken out exactly. (Ties between such huge logits also count fully
 * instead of 1/2.) */
static inline double self_step(double c, double delta) {
    return c + delta <= c ? 1.0 : 0.5;
}

/* RS Loss: out_rank, out_sort the two loss values. t > 0 positive (value = sorting target), 0 negative,
 * < 0 ignored. */
int rs_loss(const void *s, const void *t, int64_t M, int f64, double delta, double eps,
            int threads, void *grad, void *out_rank, void *out_sort, int64_t *num_pos) {
    Work w;
    double ref = 0.0;
    int rc = negatives_pass(s, t, M, f64, 0, delta, threads, &w, num_pos, &ref);
    int64_t P = *num_pos;
    if (rc || P == 0) {
        zero_grad(grad, M, f64);
        store(out_rank, 0, 0.0, f64);
        store(out_sort, 0, 0.0, f64);
        work_free(&w);
        return rc;
    }
    double inv2d = delta > 0 ? 0.5 / delta : 0.0;
    double *y = (double *)malloc(sizeof(double) * P);
    double *coef0 = (double *)malloc(sizeof(double) * P);
    double *coef1 = (double *)malloc(sizeof(double) * P);
    double *fg = (double *)malloc(sizeof(double) * P);
    if (!y || !coef0 || !coef1 || !fg) {
        rc = 3;
        goto done;
    }
    for (int64_t r = 0; r < P; ++r) y[r] = load(t, w.pos[r].at, f64);
    /* errors per positive (summed in order afterwards: the same sums on any number of threads) */
    double *err_rank = (double *)malloc(sizeof(double) * P);
    double *err_sort = (double *)malloc(sizeof(double) * P);
    if (!err_rank || !err_sort) {
        free(err_rank);
        free(err_sort);
        rc = 3;
        goto done;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16) if (P >= PAIRS_PARALLEL_MIN)
    for (int64_t r = 0; r < P; ++r) {
        double c = w.pos[r].c, yr = y[r];
        double tot = 0, tot_y = 0, hi = 0, hi_y = 0, low = 0;
        for (int64_t j = first_with_step(w.pos, P, c, delta, inv2d); j < P; ++j) {
            double h = step(w.pos[j].c - c, delta, inv2d);
            double hy = h * y[j];
            tot += h;
            tot_y += hy;
            if (y[j] >= yr) {
                hi += h;
                hi_y += hy;
            } else {
                low += h;
            }
        }
        double fp = w.fp[r];
        double sort_err = hi_y / hi - tot_y / tot;
        double rank_err = fp / (tot + fp);
        err_rank[r] = rank_err;
        err_sort[r] = sort_err;
        double step0 = low > eps ? sort_err : 0.0, step1 = fp > eps ? rank_err : 0.0;
        coef0[r] = low > eps ? sort_err / low : 0.0;
        coef1[r] = fp > eps ? rank_err / fp : 0.0;
        fg[r] = -(step0 + step1);
    }
    double sum_rank = 0.0, sum_sort = 0.0;
    for (int64_t r = 0; r < P; ++r) {
        sum_rank += err_rank[r];
        sum_sort += err_sort[r];
    }
    free(err_rank);
    free(err_sort);
    /* positive j receives sum_{r: y_r > y_j} coef0_r H(c_j - c_r) over the r with H > 0 */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16) if (P >= PAIRS_PARALLEL_MIN)
    for (int64_t j = 0; j < P; ++j) {
        double c = w.pos[j].c, yj = y[j], acc = 0.0;
        int64_t r1 = count_with_step(w.pos, P, c, delta, inv2d);
        for (int64_t r = 0; r < r1; ++r)
            if (yj < y[r] && coef0[r] != 0.0) acc += coef0[r] * step(c - w.pos[r].c, delta, inv2d);
        fg[j] += acc;
    }
    double scale = 1.0 / (double)P;
    gradient_tables(&w.B, w.pos, coef1, P, ref, delta, inv2d, w.A, w.Bt);
    negative_gradient(w.bin, s, M, f64, w.A, w.Bt, ref, scale, threads, grad);
    for (int64_t r = 0; r < P; ++r) store(grad, w.pos[r].at, fg[r] * scale, f64);
    store(out_rank, 0, sum_rank / (double)P, f64);
    store(out_sort, 0, sum_sort / (double)P, f64);
done:
    free(y);
    free(coef0);
    free(coef1);
    free(fg);
    work_free(&w);
    return rc;
}

/* aLRP Loss classification part: out = (loss_cls); rank (P,) in order of appearance; order (P,)
 * the stable ascending argsort of the positives' logits. loc (n_loc,) in order of appearance. */
int alrp_loss(const void *s, const void *t, const void *loc, int64_t n_loc, int64_t M, int f64,
              double delta, double eps, int threads, void *grad, void *out, void *rank_out,
              int64_t *order, int64_t *num_pos) {
    Work w;
    double ref = 0.0;
    int rc = negatives_pass(s, t, M, f64, 1, delta, threads, &w, num_pos, &ref);
    int64_t P = *num_pos;
    store(out, 0, 0.0, f64);
    if (!rc && P != n_loc) rc = 2;
    if (rc || P == 0) {
        zero_grad(grad, M, f64);
        work_free(&w);
        return rc;
    }
    double inv2d = 0.5 / delta;
    double *l = (double *)malloc(sizeof(double) * P);
    double *s1 = (double *)malloc(sizeof(double) * P);
    double *sl = (double *)malloc(sizeof(double) * P);
    double *coef = (double *)malloc(sizeof(double) * P);
    if (!l || !s1 || !sl || !coef) {
        rc = 3;
        goto done;
    }
    for (int64_t r = 0; r < P; ++r) l[r] = load(loc, w.pos[r].i, f64);
    if ((rc = positive_sums(&w, P, NULL, ref, delta, s1))) goto done;
    if ((rc = positive_sums(&w, P, l, ref, delta, sl))) goto done;
    double scale = 1.0 / (double)P, total = 0.0;
    for (int64_t r = 0; r < P; ++r) {
        double fp = w.fp[r], self = self_step(w.pos[r].c, delta);
        double rank = s1[r] - self + 1.0 + fp; /* rank+ = 1 + sum_{j != r} H */
        double g = fp > eps ? (sl[r] - self * l[r] + fp) / rank : 0.0;
        total += fp / rank;
        coef[r] = g / (fp > eps ? fp : eps);
        sl[r] = -g * scale; /* sl[r] is not needed any more: the positive's gradient */
        store(rank_out, w.pos[r].i, rank, f64);
        order[r] = w.pos[r].i;
    }
    gradient_tables(&w.B, w.pos, coef, P, ref, delta, inv2d, w.A, w.Bt);
    negative_gradient(w.bin, s, M, f64, w.A, w.Bt, ref, scale, threads, grad);
    for (int64_t r = 0; r < P; ++r) store(grad, w.pos[r].at, sl[r], f64);
    store(out, 0, total / (double)P, f64);
done:
    free(l);
    free(s1);
    free(sl);
    free(coef);
    work_free(&w);
    return rc;
}

/* AP Loss with interpolated precision: out = (loss). */
int ap_loss(const void *s, const void *t, int64_t M, int f64, double delta, int threads,
            void *grad, void *out, int64_t *num_pos) {
    Work w;
    double ref = 0.0;
    int rc = negatives_pass(s, t, M, f64, 1, delta, threads, &w, num_pos, &ref);
    int64_t P = *num_pos;
    store(out, 0, 0.0, f64);
    if (rc || P == 0) {
        zero_grad(grad, M, f64);
        work_free(&w);
        return rc;
    }
    double inv2d = 0.5 / delta;
    double *s1 = (double *)malloc(sizeof(double) * P);
    double *coef = (double *)malloc(sizeof(double) * P);
    if (!s1 || !coef) {
        rc = 3;
        goto done;
    }
    if ((rc = positive_sums(&w, P, NULL, ref, delta, s1))) goto done;
    double scale = 1.0 / (double)P, total = 0.0, best = -INFINITY;
    for (int64_t r = 0; r < P; ++r) { /* ascending logit order: the running max interpolates */
        double fp = w.fp[r];
        double rank_pos = s1[r] - self_step(w.pos[r].c, delta) + 1.0, rank = rank_pos + fp;
        double prec = rank_pos / rank;
        if (prec > best) best = prec;
        double interp = best;
        double factor = interp == prec ? 1.0 : (1.0 - interp) / (1.0 - prec);
        coef[r] = factor / rank;
        total += 1.0 - interp;
        s1[r] = -(1.0 - interp) * scale; /* s1[r] is not needed any more: the gradient */
    }
    gradient_tables(&w.B, w.pos, coef, P, ref, delta, inv2d, w.A, w.Bt);
    negative_gradient(w.bin, s, M, f64, w.A, w.Bt, ref, scale, threads, grad);
    for (int64_t r = 0; r < P; ++r) store(grad, w.pos[r].at, s1[r], f64);
    store(out, 0, total / (double)P, f64);
done:
    free(s1);
    free(coef);
    work_free(&w);
    return rc;
}
