/* Packed attention for reverie's children (see attention.py): causal attention over one packed row of
 * tokens where each token's keys and values are its parent's before its entry's mutated position and
 * the entry's own (earlier in the row) from there on. Computed in fp32 from fp32 or bf16 inputs.
 *
 * q: [H, T, d] and k, v: [KH, T, d] with the given strides (the last dimension contiguous);
 * kp, vp: the parents' keys and values, fp32 [M, KH, N, d] contiguous; per token t: entry[t], its
 * position[t] in its prompt; per entry e: start[e] (its first own token in the row), mutated[e] (the
 * position of that token) and parent[e]. out: [T, H, d] contiguous, in the inputs' dtype.
 * Returns 0; 1 for shapes it does not take; 2 if an index points outside the tensors (nothing is read
 * there). Work is split over `threads` threads by token. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define MAX_D 512     /* head dimension */
#define MAX_N 1024    /* prompt positions */
#define MAX_G 16      /* query heads per key/value head */
#define MAX_THREADS 64

typedef struct {
    const void *q, *k, *v;
    int bf16;
    int64_t q_head, q_token, k_head, k_token;
    const float *kp, *vp;
    const int64_t *entry, *position, *start, *mutated, *parent;
    void *out;
    int64_t T, E, M, H, KH, N, d;   /* tokens, entries, parents, heads, key/value heads, positions, head size */
    float scale, softcap;
    int64_t window;
    int64_t t0, t1;   /* the tokens this thread computes */
    int bad;          /* set if an index is out of range */
} Job;

static inline float load(const void *p, int64_t i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void store(void *p, int64_t i, float x, int bf16) {
    if (!bf16) { ((float *)p)[i] = x; return; }
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fff + ((u >> 16) & 1);   /* round to nearest even */
    ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
}

/* Key or value row i (a prompt position) of a token of entry (parent P, mutated position p, first own
 * token s0) for key/value head kh, as fp32. */
static inline const float *kv_row(const Job *j, const void *own, const float *par, int64_t P, int64_t kh,
                                  int64_t i, int64_t p, int64_t s0, float *buf) {
    if (i < p) return par + ((P * j->KH + kh) * j->N + i) * j->d;
    int64_t base = kh * j->k_head + (s0 + i - p) * j->k_token;
    if (!j->bf16) return (const float *)own + base;
    for (int64_t x = 0; x < j->d; x++) buf[x] = load(own, base + x, 1);
    return buf;
}

static void *run(void *arg) {
    Job *j = (Job *)arg;
    const int64_t d = j->d, g = j->H / j->KH;
    float q[MAX_G][MAX_D], acc[MAX_G][MAX_D], s[MAX_G][MAX_N], buf[MAX_D];
    float top[MAX_G], z[MAX_G];
    for (int64_t t = j->t0; t < j->t1; t++) {
        const int64_t e = j->entry[t], at = j->position[t];
        if (e < 0 || e >= j->E || at < 0 || at >= j->N) { j->bad = 1; return 0; }
        const int64_t p = j->mutated[e], P = j->parent[e], s0 = j->start[e];
        if (p < 0 || p > at || (p > 0 && (P < 0 || P >= j->M)) || s0 < 0 || s0 + at - p >= j->T) { j->bad = 1; return 0; }
        const int64_t lo = (j->window > 0 && at - j->window + 1 > 0) ? at - j->window + 1 : 0;
        for (int64_t kh = 0; kh < j->KH; kh++) {   /* the g query heads that share this key/value head */
            for (int64_t a = 0; a < g; a++) {
                const int64_t h = kh * g + a;
                for (int64_t x = 0; x < d; x++) q[a][x] = load(j->q, h * j->q_head + t * j->q_token + x, j->bf16) * j->scale;
                for (int64_t x = 0; x < d; x++) acc[a][x] = 0.f;
                top[a] = -3.0e38f;
                z[a] = 0.f;
            }
            for (int64_t i = lo; i <= at; i++) {
                const float *key = kv_row(j, j->k, j->kp, P, kh, i, p, s0, buf);
                for (int64_t a = 0; a < g; a++) {
                    float dot = 0.f;
                    for (int64_t x = 0; x < d; x++) dot += q[a][x] * key[x];
                    if (j->softcap > 0) dot = tanhf(dot / j->softcap) * j->softcap;
                    s[a][i] = dot;
                    if (dot > top[a]) top[a] = dot;
                }
            }
            for (int64_t a = 0; a < g; a++)
                for (int64_t i = lo; i <= at; i++) {
                    s[a][i] = expf(s[a][i] - top[a]);
                    z[a] += s[a][i];
                }
            for (int64_t i = lo; i <= at; i++) {
                const float *value = kv_row(j, j->v, j->vp, P, kh, i, p, s0, buf);
                for (int64_t a = 0; a < g; a++) {
                    const float w = s[a][i] / z[a];
                    for (int64_t x = 0; x < d; x++) acc[a][x] += w * value[x];
                }
            }
            for (int64_t a = 0; a < g; a++)
                for (int64_t x = 0; x < d; x++) store(j->out, (t * j->H + kh * g + a) * d + x, acc[a][x], j->bf16);
        }
    }
    return 0;
}

int packed_attention(const void *q, const void *k, const void *v, int bf16,
                     int64_t q_head, int64_t q_token, int64_t k_head, int64_t k_token,
                     const float *kp, const float *vp,
                     const int64_t *entry, const int64_t *position, const int64_t *start,
                     const int64_t *mutated, const int64_t *parent, void *out,
                     int64_t T, int64_t E, int64_t M, int64_t H, int64_t KH, int64_t N, int64_t d,
                     float scale, float softcap, int64_t window, int threads) {
    if (d > MAX_D || N > MAX_N || KH < 1 || H % KH || H / KH > MAX_G) return 1;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > T / 64 + 1) threads = (int)(T / 64 + 1);   /* a thread per 64 tokens at least */
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        Job job = {q, k, v, bf16, q_head, q_token, k_head, k_token, kp, vp, entry, position, start, mutated,
                   parent, out, T, E, M, H, KH, N, d, scale, softcap, window, T * i / threads, T * (i + 1) / threads, 0};
        jobs[i] = job;
    }
    int started = 1;
    for (; started < threads; started++)
        if (pthread_create(&ids[started], 0, run, &jobs[started])) break;
    for (int i = started; i < threads; i++) run(&jobs[i]);   /* threads that could not start: here */
    run(&jobs[0]);
    for (int i = 1; i < started; i++) pthread_join(ids[i], 0);
    for (int i = 0; i < threads; i++)
        if (jobs[i].bad) return 2;
    return 0;
}
