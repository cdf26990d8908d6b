/* moeprune.scoring._moments: (n, sum |w|, sum w^2) of a byte range of a file, in float64.
 *
 * The native kernel of the weight-scoring pass (scoring/weights.py falls back to numpy when this
 * module is not built). One call maps the range a window at a time (mmap, read-only, shared: the
 * page cache's own pages, no copy), reduces the window and unmaps it, so memory stays bounded
 * whatever the range. The GIL is released meanwhile, so the pass's worker threads run in parallel.
 * Pages are mapped by demand faults with MADV_SEQUENTIAL, not MAP_POPULATE: with two threads,
 * populating was up to 25 % slower where the page cache holds 4 KiB folios (each thread's populate
 * holds the address-space lock the other's mmap and munmap need), and no faster with large folios.
 * Like any mmap reader it would get SIGBUS if a shard were truncated while being scored.
 *
 * Accuracy: every value is widened exactly to float64 (a bf16 is the top half of a float32; an
 * fp16 is rebuilt from its bits; float32 -> float64 is exact), its square is exact in float64 for
 * bf16, fp16 and fp32, and |w| and w^2 are summed in float64: a block of BLOCK values in a few
 * vector-lane partial sums (256 to 1024 terms each), then each block's sums added to running
 * totals with compensation, so the error does not grow with n: at worst ~1e-13 relative (1024
 * terms), measured 0 to 1e-15 against the exact sums of 1e8 values.
 * No fast-math: infinities and NaNs propagate as in the numpy path (inf gives inf, NaN gives NaN).
 *
 * Speed: each loop is compiled twice on x86-64 with GCC or clang, for the baseline ISA (SSE2) and
 * for AVX2 + FMA, and the module picks the second at import only where the CPU has both; other
 * platforms and compilers get the baseline loop. The compiler vectorizes both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK 4096 /* values summed in vector lanes before their sums go into the running totals */
#define DEFAULT_WINDOW (16L << 20) /* bytes mapped at once (per thread) */

enum dtype { BF16, F16, F32, F64 };
static const int ITEMSIZE[] = {2, 2, 4, 8};
static const char *NAMES[] = {"BF16", "F16", "F32", "F64"};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LE16(x) __builtin_bswap16(x)
#define LE32(x) __builtin_bswap32(x)
#define LE64(x) __builtin_bswap64(x)
#else
#define LE16(x) (x)
#define LE32(x) (x)
#define LE64(x) (x)
#endif

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

/* |value| of a bf16 or fp16 whose bits, sign cleared, are ``a`` (< 0x8000), exactly, as a float. */
INLINE float bf16_abs(uint32_t a) {
    uint32_t u = a << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

INLINE float f16_abs(uint32_t a) {
    /* Normal: exponent and mantissa moved into a float32's fields and the bias raised by 127 - 15.
     * Subnormal or zero (a < 0x400): 2^-14 (1 + m/1024) - 2^-14 = m 2^-24, exact, and no float32
     * subnormal is ever an operand (those can be slow). inf and NaN (a >= 0x7C00): all exponent
     * bits set. Chosen with bit masks so that the compiler vectorizes it. */
    uint32_t e = a << 13, d = e + 0x38800000u;
    float fd;
    memcpy(&fd, &d, 4);
    fd -= 0x1p-14f;
    uint32_t sub, special = (uint32_t)0 - (uint32_t)(a >= 0x7C00u), small = (uint32_t)0 - (uint32_t)(a < 0x400u);
    memcpy(&sub, &fd, 4);
    uint32_t r = (sub & small) | ((e + 0x38000000u) & ~small);
    r = ((e | 0x7F800000u) & special) | (r & ~special);
    float f;
    memcpy(&f, &r, 4);
    return f;
}

INLINE double f32_abs(const unsigned char *p, size_t i) {
    uint32_t u;
    memcpy(&u, p + 4 * i, 4);
    u = LE32(u) & 0x7FFFFFFFu;
    float f;
    memcpy(&f, &u, 4);
    return (double)f;
}

INLINE double f64_abs(const unsigned char *p, size_t i) {
    uint64_t u;
    memcpy(&u, p + 8 * i, 8);
    u = LE64(u) & 0x7FFFFFFFFFFFFFFFull;
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* Neumaier's compensated addition: *s + *c holds the sum to about twice float64's precision.
 * (With an infinite or NaN term *c becomes NaN; `total` then returns *s, inf or NaN as it should.) */
INLINE void add_comp(double *s, double *c, double x) {
    double t = *s + x;
    *c += fabs(*s) >= fabs(x) ? (*s - t) + x : (x - t) + *s;
    *s = t;
}

static double total(double s, double c) { return isfinite(s) ? s + c : s; }

/* The kernels: add sum |w| and sum w^2 of n values at p (any alignment) to out, which holds
 * {sum |w|, sum w^2, their compensations}, a block of BLOCK values at a time. Within a block the
 * compiler keeps one partial sum per vector lane (omp simd reduction; -fopenmp-simd allows that
 * reordering for these loops only); each block's sums are then added to the totals, compensated. */

/* 2-byte values, read in little-endian pairs (one 32-bit load holds two; the order of the terms
 * is immaterial), the low and high halves summed separately (independent chains), each widened
 * by DECODE to float (exact), then to double (exact). */
#define DEFINE_HALF(NAME, DECODE)                                                                \
    INLINE void NAME(const unsigned char *p, size_t n, double *out) {                            \
        size_t pairs = n / 2;                                                                    \
        for (size_t j = 0; j < pairs;) {                                                         \
            size_t stop = pairs - j > BLOCK / 2 ? j + BLOCK / 2 : pairs;                         \
            double al = 0.0, ah = 0.0, ql = 0.0, qh = 0.0;                                       \
            _Pragma("omp simd reduction(+ : al, ah, ql, qh)") for (size_t k = j; k < stop; k++) { \
                uint32_t u;                                                                      \
                memcpy(&u, p + 4 * k, 4);                                                        \
                u = LE32(u);                                                                     \
                double lo = DECODE(u & 0x7FFFu), hi = DECODE((u >> 16) & 0x7FFFu);               \
                al += lo;                                                                        \
                ah += hi;                                                                        \
                ql += lo * lo;                                                                   \
                qh += hi * hi;                                                                   \
            }                                                                                    \
            add_comp(&out[0], &out[2], al + ah);                                                 \
            add_comp(&out[1], &out[3], ql + qh);                                                 \
            j = stop;                                                                            \
        }                                                                                        \
        if (n % 2) {                                                                             \
            uint16_t h;                                                                          \
            memcpy(&h, p + 2 * (n - 1), 2);                                                      \
            double d = DECODE(LE16(h) & 0x7FFFu);                                                \
            add_comp(&out[0], &out[2], d);                                                       \
            add_comp(&out[1], &out[3], d * d);                                                   \
        }                                                                                        \
    }

/* 4- and 8-byte values, ABS(p, i) = |value i| as a double (exact). */
#define DEFINE_WIDE(NAME, ABS)                                                                   \
    INLINE void NAME(const unsigned char *p, size_t n, double *out) {                            \
        for (size_t i = 0; i < n;) {                                                             \
            size_t stop = n - i > BLOCK ? i + BLOCK : n;                                         \
            double a = 0.0, q = 0.0;                                                             \
            _Pragma("omp simd reduction(+ : a, q)") for (size_t k = i; k < stop; k++) {          \
                double d = ABS(p, k);                                                            \
                a += d;                                                                          \
                q += d * d;                                                                      \
            }                                                                                    \
            add_comp(&out[0], &out[2], a);                                                       \
            add_comp(&out[1], &out[3], q);                                                       \
            i = stop;                                                                            \
        }                                                                                        \
    }

DEFINE_HALF(body_bf16, bf16_abs)
DEFINE_HALF(body_f16, f16_abs)
DEFINE_WIDE(body_f32, f32_abs)
DEFINE_WIDE(body_f64, f64_abs)

typedef void (*kernel)(const unsigned char *, size_t, double *);

static void generic_bf16(const unsigned char *p, size_t n, double *o) { body_bf16(p, n, o); }
static void generic_f16(const unsigned char *p, size_t n, double *o) { body_f16(p, n, o); }
static void generic_f32(const unsigned char *p, size_t n, double *o) { body_f32(p, n, o); }
static void generic_f64(const unsigned char *p, size_t n, double *o) { body_f64(p, n, o); }
static const kernel GENERIC[] = {generic_bf16, generic_f16, generic_f32, generic_f64};

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2 1
#define AVX2 __attribute__((target("avx2,fma")))
AVX2 static void avx2_bf16(const unsigned char *p, size_t n, double *o) { body_bf16(p, n, o); }
AVX2 static void avx2_f16(const unsigned char *p, size_t n, double *o) { body_f16(p, n, o); }
AVX2 static void avx2_f32(const unsigned char *p, size_t n, double *o) { body_f32(p, n, o); }
AVX2 static void avx2_f64(const unsigned char *p, size_t n, double *o) { body_f64(p, n, o); }
static const kernel FAST[] = {avx2_bf16, avx2_f16, avx2_f32, avx2_f64};
#endif

static const kernel *best = GENERIC;
static const char *best_isa = "generic";

static int parse_dtype(PyObject *obj) {
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s != NULL) {
        for (int d = 0; d < 4; d++) {
            if (strcmp(s, NAMES[d]) == 0) {
                return d;
            }
        }
    }
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "dtype must be one of 'BF16', 'F16', 'F32', 'F64', not %R", obj);
    return -1;
}

PyDoc_STRVAR(moments_doc,
             "moments(fd, offset, nbytes, dtype, window=0, isa=None) -> (n, sum_abs, sum_sq)\n\n"
             "Values, sum |w| and sum w^2 (float64) of the ``nbytes`` bytes at ``offset`` of the open\n"
             "file ``fd``, holding little-endian ``dtype`` values ('BF16', 'F16', 'F32', 'F64').\n"
             "The range is mapped ``window`` bytes at a time (0: the default, 16 MiB; rounded to whole\n"
             "pages, at least two); ``isa`` ('generic' or the module's ``isa``) picks the loop\n"
             "(tests). Raises OSError if the file is shorter than the range or cannot be mapped.");

static PyObject *moments(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"fd", "offset", "nbytes", "dtype", "window", "isa", NULL};
    int fd;
    long long offset, nbytes, window = 0;
    PyObject *dtype_obj;
    const char *isa = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iLLO|Lz:moments", kwlist, &fd, &offset, &nbytes, &dtype_obj,
                                     &window, &isa)) {
        return NULL;
    }
    int dt = parse_dtype(dtype_obj);
    if (dt < 0) {
        return NULL;
    }
    const kernel *table = best;
    if (isa != NULL) {
        if (strcmp(isa, "generic") == 0) {
            table = GENERIC;
        } else if (strcmp(isa, best_isa) != 0) {
            return PyErr_Format(PyExc_ValueError, "isa %s is not available here", isa);
        }
    }
    const long long size = ITEMSIZE[dt];
    if (offset < 0 || nbytes < 0 || window < 0) {
        return PyErr_Format(PyExc_ValueError, "negative offset, nbytes or window");
    }
    if (nbytes % size != 0) {
        return PyErr_Format(PyExc_ValueError, "%lld bytes is not a whole number of %s values", nbytes, NAMES[dt]);
    }
    const long long page = sysconf(_SC_PAGESIZE);
    window = window == 0 ? DEFAULT_WINDOW : window;
    window = (window + page - 1) / page * page;
    if (window < 2 * page) {
        window = 2 * page;
    }

    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    int err = 0;
    long long file_size = -1;
    kernel reduce = table[dt];
    Py_BEGIN_ALLOW_THREADS
    struct stat st;
    if (fstat(fd, &st) != 0) {
        err = errno;
    } else if (offset > (long long)st.st_size - nbytes) {
        file_size = st.st_size; /* mapping past the end would raise SIGBUS on access */
    } else {
        long long pos = offset;
        const long long end = offset + nbytes;
        while (pos < end) {
            long long base = pos - pos % page;
            long long stop = base + window;
            if (stop >= end) {
                stop = end;
            } else {
                stop -= (stop - pos) % size; /* whole values: the next window maps the page again */
            }
            size_t len = (size_t)(stop - base);
            void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)base);
            if (map == MAP_FAILED) {
                err = errno;
                break;
            }
            madvise(map, len, MADV_SEQUENTIAL); /* a hint: read ahead further where pages are not cached */
            reduce((const unsigned char *)map + (pos - base), (size_t)((stop - pos) / size), sums);
            munmap(map, len);
            pos = stop;
        }
    }
    Py_END_ALLOW_THREADS
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (file_size >= 0) {
        return PyErr_Format(PyExc_OSError, "file ends at byte %lld, before the %lld bytes at offset %lld", file_size,
                            nbytes, offset);
    }
    return Py_BuildValue("Ldd", nbytes / size, total(sums[0], sums[2]), total(sums[1], sums[3]));
}

static PyMethodDef methods[] = {
    {"moments", (PyCFunction)(void (*)(void))moments, METH_VARARGS | METH_KEYWORDS, moments_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
#ifdef HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        best = FAST;
        best_isa = "avx2";
    }
#endif
    if (PyModule_AddStringConstant(module, "isa", best_isa) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "DEFAULT_WINDOW", (long)DEFAULT_WINDOW);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "moeprune.scoring._moments",
    .m_doc = "Native kernel of the weight-scoring pass: (n, sum |w|, sum w^2) of a byte range of a file.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__moments(void) { return PyModuleDef_Init(&module_def); }
