/* The C matching core behind exchange/engine/fastbook.py (FastBook).
 *
 * It runs the hot commands of exchange/engine/orderbook.py (the reference)
 * with the same rules and emits the same msgspec events:
 *   - NewOrder of type limit or market, every tif and STP mode, not
 *     reduce-only, with all of its validation;
 *   - Cancel, CancelAll and Amend of resting orders.
 * Every other command (stops, reduce-only, prices, book requests,
 * malformed lines, or a field of an unexpected Python type) is handed back
 * to the Python wrapper (return value 1), which either handles it without
 * touching the book or moves the whole book to the pure core.
 *
 * Layout: orders are integer handles into struct-of-arrays storage with
 * intrusive prev/next lists per level and a free list; a client id of up to
 * 15 ASCII characters is stored inline (no str object per resting order);
 * the id maps to a handle through an open-addressing table of 8-byte entries
 * (32 bits of the id's hash as a tag, the handle; linear probing,
 * backward-shift deletion). Each side keeps its level keys (bids: price,
 * asks: -price) sorted ascending with the best at the end.
 *
 * Events are msgspec Structs appended to a list, or in JSON mode (replay)
 * JSON lines written into a buffer, byte for byte what msgspec writes.
 *
 * Limits (checked by the wrapper before it uses this core): quantities up to
 * fastbook.C_MAX_QTY so a level total (at most MAX_LIVE_ORDERS orders) fits
 * in int64; prices below 2**62.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#ifndef CCORE_SOURCE_SHA256
#define CCORE_SOURCE_SHA256 "unknown"
#endif

#define MAX_PRICE ((int64_t)1 << 62)
#define MAX_QTY ((int64_t)1 << 62)
#define MAX_LIVE_ORDERS 10000000
#define MAX_ID_LEN 64
#define MAX_SHARED_ACCOUNTS 100000
#define NO_BOUND INT64_MIN

enum { STP_NONE = 0, STP_CANCEL_TAKER = 1, STP_CANCEL_MAKER = 2, STP_CANCEL_BOTH = 3 };
enum { TIF_GTC = 0, TIF_IOC, TIF_FOK, TIF_POST_ONLY, TIF_BAD };
enum {
    OK = 0, UNKNOWN_ORDER = 3001, DUPLICATE_ORDER_ID = 3002, BAD_TICK = 3003, BAD_LOT = 3004,
    OUTSIDE_BAND = 3005, POST_ONLY_WOULD_TAKE = 3006, FOK_UNFILLABLE = 3007, BAD_QTY = 3008,
    BAD_PRICE = 3009, BAD_ORDER_TYPE = 3010, BAD_SIDE = 3011, BAD_ID = 3012, BOOK_FULL = 3017
};

/* ------------------------------------------------ module configuration */

static PyTypeObject *T_NEW, *T_CANCEL, *T_CANCEL_ALL, *T_AMEND;
static PyObject *T_AMENDED;
static Py_ssize_t OFF_AMEND_ID, OFF_AMEND_QTY, OFF_AMEND_PRICE, OFF_AMEND_ACCOUNT, OFF_AMEND_TS;
static PyObject *T_ACCEPTED, *T_TRADE, *T_CANCELLED, *T_REJECTED;
static PyObject *REASONS; /* dict int -> str */
static Py_ssize_t OFF_NEW[12]; /* id account side qty type price tif stp reduce_only trigger_price trigger ts */
static Py_ssize_t OFF_CANCEL_ID, OFF_CANCEL_ACCOUNT, OFF_CANCEL_ALL_ACCOUNT;
static PyObject *S_BUY, *S_SELL, *S_LIMIT, *S_MARKET, *S_STOP_LIMIT, *S_STOP_MARKET, *S_GTC,
    *S_IOC, *S_FOK, *S_POST_ONLY, *S_CANCEL_TAKER, *S_CANCEL_MAKER, *S_CANCEL_BOTH, *S_USER,
    *S_STP, *S_R_IOC, *S_R_FOK, *S_MKT_PROT, *S_MKT_NOLIQ, *S_CANCEL_ALL;
static int configured = 0;

#define FIELD(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static int ueq(PyObject *a, PyObject *b) {
    /* Equality of two exact str objects. */
    if (a == b) return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b)) return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

static int str_is(PyObject *a, PyObject *lit) {
    return PyUnicode_CheckExact(a) && ueq(a, lit);
}

/* ------------------------------------------------------------- the book */

/* A client id of up to KEY_INLINE ASCII characters is stored inline
 * (length in the last byte): no str object per resting order. Longer or
 * non-ASCII ids keep a reference to their str (last byte KEY_PTR). */
#define KEY_SIZE 16
#define KEY_INLINE (KEY_SIZE - 1)
#define KEY_PTR 0xFF

typedef struct {
    int64_t *keys;  /* ascending; best at the end */
    int32_t *lvl;   /* level handle per key */
    Py_ssize_t n, cap;
} Side;

typedef struct {
    PyObject_HEAD
    int64_t tick, lot, min_qty, max_qty, band_bps;
    int has_ref;
    int64_t ref, band_lo, band_hi;
    int64_t seq, next_oid;
    PyObject *events;   /* list */
    PyObject *explain;  /* callable(code, cmd) -> str */
    PyObject *accounts; /* dict: shared account strings */
    PyObject *slow;     /* callable(cmd): runs a command the C core hands back */
    PyObject *delegate; /* callable(cmd): once the book moved to the pure core */
    /* orders */
    Py_ssize_t o_cap, live;
    int32_t o_free;
    int64_t *o_oid, *o_qty; /* the price is the level's */
    int32_t *o_prev, *o_next, *o_level; /* o_level -1: free slot */
    uint8_t *o_flags;                   /* bit0 is_buy, bit1 post_only; bits 2-3 stp */
    uint8_t (*o_key)[KEY_SIZE]; /* the client id: see key_store() */
    PyObject **o_acct;
    /* id index */
    uint64_t *idx;
    size_t idx_mask, idx_used;
    /* levels */
    Py_ssize_t l_cap;
    int32_t l_free;
    int64_t *l_price, *l_total;
    int32_t *l_head, *l_tail, *l_count;
    PyObject **l_pyprice;
    Side side[2]; /* 0 bids (key = price), 1 asks (key = -price) */
    int halt;     /* self-trade prevention cancelled the taker */
    /* JSON mode: events are written as JSON lines into jbuf instead of
     * being appended to `events` (see emit()) */
    int json;
    char *jbuf;
    Py_ssize_t jlen, jcap;
} Core;

static Py_hash_t str_hash(PyObject *s) {
    Py_hash_t h = ((PyASCIIObject *)s)->hash;
    return h != -1 ? h : PyObject_Hash(s);
}

static int grow(void **p, Py_ssize_t n, size_t elem) {
    void *q = PyMem_Realloc(*p, (size_t)n * elem);
    if (q == NULL) { PyErr_NoMemory(); return -1; }
    *p = q;
    return 0;
}

static int orders_reserve(Core *b) {
    if (b->o_free >= 0) return 0;
    Py_ssize_t old = b->o_cap, cap = old ? old + old / 2 : 1024;
    if (grow((void **)&b->o_oid, cap, 8) ||
        grow((void **)&b->o_qty, cap, 8) || grow((void **)&b->o_prev, cap, 4) ||
        grow((void **)&b->o_next, cap, 4) || grow((void **)&b->o_level, cap, 4) ||
        grow((void **)&b->o_flags, cap, 1) || grow((void **)&b->o_key, cap, KEY_SIZE) ||
        grow((void **)&b->o_acct, cap, sizeof(PyObject *)))
        return -1;
    for (Py_ssize_t i = cap - 1; i >= old; i--) {
        b->o_level[i] = -1;
        b->o_key[i][KEY_INLINE] = 0;
        b->o_acct[i] = NULL;
        b->o_next[i] = b->o_free;
        b->o_free = (int32_t)i;
    }
    b->o_cap = cap;
    return 0;
}

static int levels_reserve(Core *b) {
    if (b->l_free >= 0) return 0;
    Py_ssize_t old = b->l_cap, cap = old ? old * 2 : 256;
    if (grow((void **)&b->l_price, cap, 8) || grow((void **)&b->l_total, cap, 8) ||
        grow((void **)&b->l_head, cap, 4) || grow((void **)&b->l_tail, cap, 4) ||
        grow((void **)&b->l_count, cap, 4) || grow((void **)&b->l_pyprice, cap, sizeof(PyObject *)))
        return -1;
    for (Py_ssize_t i = cap - 1; i >= old; i--) {
        b->l_pyprice[i] = NULL;
        b->l_head[i] = b->l_free; /* free list through l_head */
        b->l_free = (int32_t)i;
    }
    b->l_cap = cap;
    return 0;
}

/* client ids */
static inline int key_is_ptr(Core *b, int32_t o) { return b->o_key[o][KEY_INLINE] == KEY_PTR; }

static inline PyObject *key_ptr(Core *b, int32_t o) {
    PyObject *p;
    memcpy(&p, b->o_key[o], sizeof p);
    return p;
}

static void key_store(Core *b, int32_t o, PyObject *id) {
    /* id: an exact str */
    Py_ssize_t n = PyUnicode_GET_LENGTH(id);
    if (PyUnicode_IS_ASCII(id) && n <= KEY_INLINE) {
        memcpy(b->o_key[o], PyUnicode_DATA(id), (size_t)n);
        b->o_key[o][KEY_INLINE] = (uint8_t)n;
    } else {
        Py_INCREF(id);
        memcpy(b->o_key[o], &id, sizeof id);
        b->o_key[o][KEY_INLINE] = KEY_PTR;
    }
}

static void key_clear(Core *b, int32_t o) {
    if (key_is_ptr(b, o)) Py_DECREF(key_ptr(b, o));
    b->o_key[o][KEY_INLINE] = 0;
}

static PyObject *key_new_ref(Core *b, int32_t o) {
    /* a new reference to the id as a str (equal to the one stored) */
    if (key_is_ptr(b, o)) {
        PyObject *p = key_ptr(b, o);
        Py_INCREF(p);
        return p;
    }
    Py_ssize_t n = b->o_key[o][KEY_INLINE];
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL) return NULL;
    memcpy(PyUnicode_DATA(s), b->o_key[o], (size_t)n);
    return s;
}

static inline int key_eq(Core *b, int32_t o, PyObject *id) {
    if (key_is_ptr(b, o)) return ueq(key_ptr(b, o), id);
    Py_ssize_t n = b->o_key[o][KEY_INLINE];
    return PyUnicode_IS_ASCII(id) && PyUnicode_GET_LENGTH(id) == n &&
           memcmp(PyUnicode_DATA(id), b->o_key[o], (size_t)n) == 0;
}

static Py_hash_t key_hash(Core *b, int32_t o) {
    /* str's own hash: for an ASCII str it is _Py_HashBytes of its characters */
    if (key_is_ptr(b, o)) return ((PyASCIIObject *)key_ptr(b, o))->hash;
    return _Py_HashBytes(b->o_key[o], b->o_key[o][KEY_INLINE]);
}

/* id index: entries are (low 32 bits of the id's hash) << 32 | (handle + 1),
 * 0 is empty; the tag spares a visit to the stored string on most probes. */
#define IDX_TAG(h) ((uint32_t)(h))
#define IDX_ENTRY(tag, s) (((uint64_t)(tag) << 32) | (uint32_t)((s) + 1))
#define IDX_HANDLE(e) ((int32_t)((uint32_t)(e)) - 1)

static int32_t idx_find(Core *b, PyObject *id, Py_hash_t h) {
    if (b->idx == NULL) return -1;
    uint32_t tag = IDX_TAG(h);
    size_t i = tag & b->idx_mask;
    for (;;) {
        uint64_t e = b->idx[i];
        if (e == 0) return -1;
        if ((uint32_t)(e >> 32) == tag) {
            int32_t s = IDX_HANDLE(e);
            if (key_eq(b, s, id)) return s;
        }
        i = (i + 1) & b->idx_mask;
    }
}

static int idx_resize(Core *b, size_t size) {
    uint64_t *t = PyMem_Calloc(size, sizeof(uint64_t));
    if (t == NULL) { PyErr_NoMemory(); return -1; }
    size_t mask = size - 1;
    if (b->idx != NULL) {
        for (size_t j = 0; j <= b->idx_mask; j++) {
            uint64_t e = b->idx[j];
            if (e == 0) continue;
            size_t i = (uint32_t)(e >> 32) & mask;
            while (t[i] != 0) i = (i + 1) & mask;
            t[i] = e;
        }
        PyMem_Free(b->idx);
    }
    b->idx = t;
    b->idx_mask = mask;
    return 0;
}

static int idx_insert(Core *b, int32_t s, Py_hash_t h) {
    /* load factor at most 3/4 */
    if (b->idx == NULL || (b->idx_used + 1) * 4 > (b->idx_mask + 1) * 3) {
        if (idx_resize(b, b->idx == NULL ? 1024 : (b->idx_mask + 1) * 2) < 0) return -1;
    }
    uint32_t tag = IDX_TAG(h);
    size_t i = tag & b->idx_mask;
    while (b->idx[i] != 0) i = (i + 1) & b->idx_mask;
    b->idx[i] = IDX_ENTRY(tag, s);
    b->idx_used++;
    return 0;
}

static void idx_delete(Core *b, int32_t s, Py_hash_t h) {
    size_t mask = b->idx_mask;
    uint64_t want = IDX_ENTRY(IDX_TAG(h), s);
    size_t i = IDX_TAG(h) & mask;
    while (b->idx[i] != want) i = (i + 1) & mask;
    /* backward-shift deletion */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        uint64_t e = b->idx[j];
        if (e == 0) break;
        size_t home = (uint32_t)(e >> 32) & mask;
        /* e may move to i unless its home is cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            b->idx[i] = e;
            i = j;
        }
    }
    b->idx[i] = 0;
    b->idx_used--;
}

/* sides */
static Py_ssize_t side_find(Side *sd, int64_t key) {
    /* index of key, or -(insertion point) - 1 */
    Py_ssize_t lo = 0, hi = sd->n;
    if (hi > 0 && sd->keys[hi - 1] == key) return hi - 1;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) >> 1;
        if (sd->keys[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    if (lo < sd->n && sd->keys[lo] == key) return lo;
    return -lo - 1;
}

static int side_insert(Side *sd, Py_ssize_t pos, int64_t key, int32_t lvl) {
    if (sd->n == sd->cap) {
        Py_ssize_t cap = sd->cap ? sd->cap * 2 : 64;
        if (grow((void **)&sd->keys, cap, 8) || grow((void **)&sd->lvl, cap, 4)) return -1;
        sd->cap = cap;
    }
    memmove(sd->keys + pos + 1, sd->keys + pos, (size_t)(sd->n - pos) * 8);
    memmove(sd->lvl + pos + 1, sd->lvl + pos, (size_t)(sd->n - pos) * 4);
    sd->keys[pos] = key;
    sd->lvl[pos] = lvl;
    sd->n++;
    return 0;
}

static void side_remove_at(Side *sd, Py_ssize_t pos) {
    memmove(sd->keys + pos, sd->keys + pos + 1, (size_t)(sd->n - pos - 1) * 8);
    memmove(sd->lvl + pos, sd->lvl + pos + 1, (size_t)(sd->n - pos - 1) * 4);
    sd->n--;
}

static void level_free(Core *b, int32_t l) {
    Py_CLEAR(b->l_pyprice[l]);
    b->l_head[l] = b->l_free;
    b->l_free = l;
}

static void set_reference(Core *b, int has, int64_t price) {
    b->has_ref = has;
    b->ref = has ? price : 0;
    if (!has || b->band_bps == 0) {
        b->band_lo = 1;
        b->band_hi = MAX_PRICE;
        return;
    }
    int64_t width = (int64_t)((__int128)price * b->band_bps / 10000);
    b->band_lo = price - width > 1 ? price - width : 1;
    b->band_hi = price + width;
}

/* ------------------------------------------------------------- events */

/* JSON lines of the four event types the core emits, byte for byte as
 * msgspec encodes them: fragment i is what comes before argument i
 * ('{"type":"trade","seq":' then ',"maker":' ...). Set by configure_json(). */
#define MAX_EVENT_FIELDS 12
typedef struct {
    PyObject *type;
    Py_ssize_t n;
    PyObject *frag[MAX_EVENT_FIELDS]; /* bytes */
} EventFormat;
static EventFormat FORMATS[8];
static Py_ssize_t N_FORMATS = 0;
static PyObject *ENCODE = NULL; /* msgspec.json.Encoder().encode: the fallback */

static int jbuf_reserve(Core *b, Py_ssize_t extra) {
    if (b->jlen + extra <= b->jcap) return 0;
    Py_ssize_t cap = b->jcap ? b->jcap : 65536;
    while (cap < b->jlen + extra) cap *= 2;
    char *q = PyMem_Realloc(b->jbuf, (size_t)cap);
    if (q == NULL) { PyErr_NoMemory(); return -1; }
    b->jbuf = q;
    b->jcap = cap;
    return 0;
}

static int jbuf_put(Core *b, const char *p, Py_ssize_t n) {
    if (jbuf_reserve(b, n) < 0) return -1;
    memcpy(b->jbuf + b->jlen, p, (size_t)n);
    b->jlen += n;
    return 0;
}

/* Write one value: 0 written, 1 not a plain value (the caller falls back), -1 error. */
static int json_value(Core *b, PyObject *v) {
    if (v == Py_None) return jbuf_put(b, "null", 4);
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return 1;
        if (x == -1 && PyErr_Occurred()) return -1;
        char tmp[24];
        char *e = tmp + sizeof tmp, *q = e;
        unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
        do { *--q = (char)('0' + u % 10); u /= 10; } while (u);
        if (x < 0) *--q = '-';
        return jbuf_put(b, q, e - q);
    }
    if (PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v)) {
        const unsigned char *d = PyUnicode_DATA(v);
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        for (Py_ssize_t i = 0; i < n; i++)
            if (d[i] < 0x20 || d[i] >= 0x7f || d[i] == '"' || d[i] == '\\') return 1;
        if (jbuf_reserve(b, n + 2) < 0) return -1;
        b->jbuf[b->jlen++] = '"';
        memcpy(b->jbuf + b->jlen, d, (size_t)n);
        b->jlen += n;
        b->jbuf[b->jlen++] = '"';
        return 0;
    }
    return 1;
}

/* Append the msgspec encoding of event object ev and a newline. */
static int jbuf_put_encoded(Core *b, PyObject *ev) {
    PyObject *data = PyObject_CallOneArg(ENCODE, ev);
    if (data == NULL) return -1;
    if (!PyBytes_Check(data)) {
        Py_DECREF(data);
        PyErr_SetString(PyExc_TypeError, "encode() must return bytes");
        return -1;
    }
    int r = jbuf_put(b, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    return r < 0 ? -1 : jbuf_put(b, "\n", 1);
}

static int emit_json(Core *b, PyObject *type, PyObject *const *args, size_t n) {
    /* 0 written, 1 fall back to the object, -1 error */
    EventFormat *f = NULL;
    for (Py_ssize_t i = 0; i < N_FORMATS; i++)
        if (FORMATS[i].type == type) f = &FORMATS[i];
    if (f == NULL || (size_t)f->n != n) return 1;
    Py_ssize_t start = b->jlen;
    for (size_t i = 0; i < n; i++) {
        PyObject *frag = f->frag[i];
        if (jbuf_put(b, PyBytes_AS_STRING(frag), PyBytes_GET_SIZE(frag)) < 0) return -1;
        int r = json_value(b, args[i]);
        if (r != 0) {
            b->jlen = start;
            return r;
        }
    }
    return jbuf_put(b, "}\n", 2);
}

static int emit(Core *b, PyObject *type, PyObject *const *args, size_t n) {
    if (b->json) {
        int r = emit_json(b, type, args, n);
        if (r <= 0) return r;
    }
    PyObject *ev = PyObject_Vectorcall(type, args, n, NULL);
    if (ev == NULL) return -1;
    int r = b->json ? jbuf_put_encoded(b, ev) : PyList_Append(b->events, ev);
    Py_DECREF(ev);
    return r;
}

static int emit_cancelled(Core *b, PyObject *id, int64_t qty, PyObject *reason) {
    PyObject *seq = PyLong_FromLongLong(++b->seq);
    PyObject *q = PyLong_FromLongLong(qty);
    int r = -1;
    if (seq && q) {
        PyObject *args[4] = {seq, id, q, reason};
        r = emit(b, T_CANCELLED, args, 4);
    }
    Py_XDECREF(seq);
    Py_XDECREF(q);
    return r;
}

static int emit_rejected(Core *b, PyObject *id, int code, PyObject *message) {
    PyObject *c = PyLong_FromLong(code);
    if (c == NULL) return -1;
    PyObject *reason = PyDict_GetItemWithError(REASONS, c);
    if (reason == NULL) {
        Py_DECREF(c);
        if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "no reason for code %d", code);
        return -1;
    }
    PyObject *seq = PyLong_FromLongLong(++b->seq);
    int r = -1;
    if (seq) {
        PyObject *args[5] = {seq, id, c, reason, message};
        r = emit(b, T_REJECTED, args, 5);
    }
    Py_XDECREF(seq);
    Py_DECREF(c);
    return r;
}

static int reject_explained(Core *b, PyObject *id, int code, PyObject *cmd) {
    PyObject *c = PyLong_FromLong(code);
    if (c == NULL) return -1;
    PyObject *msg = PyObject_CallFunctionObjArgs(b->explain, c, cmd, NULL);
    Py_DECREF(c);
    if (msg == NULL) return -1;
    int r = emit_rejected(b, id, code, msg);
    Py_DECREF(msg);
    return r;
}

/* ---------------------------------------------------------- book moves */

static inline int64_t best_price(Core *b, int s, int *has) {
    Side *sd = &b->side[s];
    if (sd->n == 0) { *has = 0; return 0; }
    *has = 1;
    return s == 0 ? sd->keys[sd->n - 1] : -sd->keys[sd->n - 1];
}

static PyObject *shared_account(Core *b, PyObject *account) {
    PyObject *shared = PyDict_GetItemWithError(b->accounts, account);
    if (shared != NULL) return shared;
    if (PyErr_Occurred()) return NULL;
    if (PyDict_GET_SIZE(b->accounts) < MAX_SHARED_ACCOUNTS &&
        PyDict_SetItem(b->accounts, account, account) < 0)
        return NULL;
    return account;
}

/* Append a new order to the tail of its level; returns its handle or -1. */
static int32_t rest(Core *b, int64_t oid, PyObject *id, Py_hash_t h, PyObject *account,
                    int is_buy, int64_t price, int64_t qty, int post_only, int stp) {
    PyObject *acct = shared_account(b, account);
    if (acct == NULL) return -1;
    if (orders_reserve(b) < 0) return -1;
    int s = is_buy ? 0 : 1;
    Side *sd = &b->side[s];
    int64_t key = is_buy ? price : -price;
    Py_ssize_t pos = side_find(sd, key);
    int32_t l;
    if (pos >= 0) {
        l = sd->lvl[pos];
    } else {
        if (levels_reserve(b) < 0) return -1;
        PyObject *pyprice = PyLong_FromLongLong(price);
        if (pyprice == NULL) return -1;
        l = b->l_free;
        if (side_insert(sd, -pos - 1, key, l) < 0) { Py_DECREF(pyprice); return -1; }
        b->l_free = b->l_head[l];
        b->l_price[l] = price;
        b->l_pyprice[l] = pyprice;
        b->l_total[l] = 0;
        b->l_count[l] = 0;
        b->l_head[l] = b->l_tail[l] = -1;
    }
    int32_t o = b->o_free;
    if (idx_insert(b, o, h) < 0) return -1;
    b->o_free = b->o_next[o];
    b->o_oid[o] = oid;
    b->o_qty[o] = qty;
    b->o_flags[o] = (uint8_t)((is_buy ? 1 : 0) | (post_only ? 2 : 0) | (stp << 2));
    key_store(b, o, id);
    Py_INCREF(acct);
    b->o_acct[o] = acct;
    int32_t tail = b->l_tail[l];
    b->o_prev[o] = tail;
    b->o_next[o] = -1;
    if (tail < 0) b->l_head[l] = o;
    else b->o_next[tail] = o;
    b->l_tail[l] = o;
    b->l_total[l] += qty;
    b->l_count[l] += 1;
    b->o_level[o] = l;
    b->live++;
    return o;
}

/* Forget order o (already unlinked from its level). */
static void release(Core *b, int32_t o) {
    idx_delete(b, o, key_hash(b, o));
    key_clear(b, o);
    Py_CLEAR(b->o_acct[o]);
    b->o_level[o] = -1;
    b->o_next[o] = b->o_free;
    b->o_free = o;
    b->live--;
}

/* Unlink o from its level (dropping the level when it empties). */
static void unlink_order(Core *b, int32_t o) {
    int32_t l = b->o_level[o];
    int32_t prev = b->o_prev[o], nxt = b->o_next[o];
    if (prev < 0) b->l_head[l] = nxt;
    else b->o_next[prev] = nxt;
    if (nxt < 0) b->l_tail[l] = prev;
    else b->o_prev[nxt] = prev;
    b->l_total[l] -= b->o_qty[o];
    b->l_count[l] -= 1;
    if (b->l_head[l] < 0) {
        int s = (b->o_flags[o] & 1) ? 0 : 1;
        Side *sd = &b->side[s];
        int64_t key = s == 0 ? b->l_price[l] : -b->l_price[l];
        if (sd->keys[sd->n - 1] == key) sd->n--;
        else side_remove_at(sd, side_find(sd, key));
        level_free(b, l);
    }
}

static int64_t protection_bound(Core *b, int is_buy) {
    if (b->band_bps == 0) return NO_BOUND;
    int64_t ref = b->ref;
    if (!b->has_ref) {
        int has;
        ref = best_price(b, is_buy ? 1 : 0, &has);
        if (!has) return NO_BOUND;
    }
    int64_t width = (int64_t)((__int128)ref * b->band_bps / 10000);
    return is_buy ? -(ref + width) : ref - width;
}

static int fillable(Core *b, PyObject *account, int is_buy, int64_t bound, int64_t qty, int stp) {
    Side *sd = &b->side[is_buy ? 1 : 0];
    int64_t need = qty;
    for (Py_ssize_t i = sd->n - 1; i >= 0 && sd->keys[i] >= bound; i--) {
        int32_t l = sd->lvl[i];
        if (stp == STP_NONE) {
            if (b->l_total[l] >= need) return 1;
            need -= b->l_total[l];
        } else {
            for (int32_t o = b->l_head[l]; o >= 0; o = b->o_next[o]) {
                if (ueq(b->o_acct[o], account)) {
                    if (stp != STP_CANCEL_MAKER) return 0;
                } else {
                    if (b->o_qty[o] >= need) return 1;
                    need -= b->o_qty[o];
                }
            }
        }
    }
    return 0;
}

/* Trade qty against the opposite side down to bound; returns what is left
 * (or -1 on a Python error). Sets b->halt when STP cancelled the taker. */
static int64_t match(Core *b, PyObject *id, PyObject *account, int is_buy, int64_t bound,
                     int64_t qty, int stp, PyObject *ts) {
    b->halt = 0;
    int s = is_buy ? 1 : 0;
    Side *sd = &b->side[s];
    if (sd->n == 0 || sd->keys[sd->n - 1] < bound) return qty;
    PyObject *taker_side = is_buy ? S_BUY : S_SELL;
    int64_t remaining = qty;
    int64_t traded_price = 0;
    while (remaining > 0 && sd->n > 0) {
        int64_t key = sd->keys[sd->n - 1];
        if (key < bound) break;
        int32_t l = sd->lvl[sd->n - 1];
        int64_t price = b->l_price[l];
        PyObject *pyprice = b->l_pyprice[l];
        Py_INCREF(pyprice); /* the level may be freed inside the loop */
        int32_t o = b->l_head[l];
        int level_gone = 0;
        while (o >= 0) {
            if (stp != STP_NONE && ueq(b->o_acct[o], account)) {
                if (stp != STP_CANCEL_TAKER) {
                    int64_t oq = b->o_qty[o];
                    int last = b->l_count[l] == 1;
                    PyObject *oid_s = key_new_ref(b, o);
                    if (oid_s == NULL) { Py_DECREF(pyprice); return -1; }
                    unlink_order(b, o);
                    release(b, o);
                    int r = emit_cancelled(b, oid_s, oq, S_STP);
                    Py_DECREF(oid_s);
                    if (r < 0) { Py_DECREF(pyprice); return -1; }
                    if (last) { level_gone = 1; }
                }
                if (stp != STP_CANCEL_MAKER) {
                    b->halt = 1;
                    break;
                }
                if (level_gone) break;
                o = b->l_head[l];
                continue;
            }
            int64_t oqty = b->o_qty[o];
            traded_price = price;
            int64_t fill = oqty > remaining ? remaining : oqty;
            PyObject *seq = PyLong_FromLongLong(++b->seq);
            PyObject *q = PyLong_FromLongLong(fill);
            PyObject *maker = key_new_ref(b, o);
            if (seq == NULL || q == NULL || maker == NULL) {
                Py_XDECREF(seq); Py_XDECREF(q); Py_XDECREF(maker); Py_DECREF(pyprice);
                return -1;
            }
            PyObject *args[9] = {seq, maker, id, pyprice, q, taker_side, b->o_acct[o],
                                 account, ts};
            int r = emit(b, T_TRADE, args, 9);
            Py_DECREF(seq);
            Py_DECREF(q);
            Py_DECREF(maker);
            if (r < 0) { Py_DECREF(pyprice); return -1; }
            if (oqty > remaining) {
                b->o_qty[o] = oqty - remaining;
                b->l_total[l] -= remaining;
                remaining = 0;
                break;
            }
            remaining -= oqty;
            int32_t nxt = b->o_next[o];
            int last = b->l_count[l] == 1;
            unlink_order(b, o);
            release(b, o);
            if (last) { level_gone = 1; break; }
            if (remaining == 0) break;
            o = nxt;
        }
        Py_DECREF(pyprice);
        (void)level_gone;
        if (b->halt) break;
    }
    if (traded_price != 0) set_reference(b, 1, traded_price);
    return remaining;
}

/* ------------------------------------------------------------ commands */

static int as_i64(PyObject *v, int64_t *out) {
    /* exact int -> 0 and *out; overflow -> 1 (positive) or -1 (negative) */
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return overflow;
    *out = x;
    return 0;
}

static int on_new(Core *b, PyObject *c) {
    PyObject *id = FIELD(c, OFF_NEW[0]), *account = FIELD(c, OFF_NEW[1]),
             *side = FIELD(c, OFF_NEW[2]), *pqty = FIELD(c, OFF_NEW[3]),
             *t = FIELD(c, OFF_NEW[4]), *pprice = FIELD(c, OFF_NEW[5]),
             *tif_s = FIELD(c, OFF_NEW[6]), *stp_s = FIELD(c, OFF_NEW[7]),
             *reduce_only = FIELD(c, OFF_NEW[8]), *trigger_price = FIELD(c, OFF_NEW[9]),
             *ts = FIELD(c, OFF_NEW[11]);
    if (!id || !account || !side || !pqty || !t || !pprice || !tif_s || !stp_s || !reduce_only ||
        !trigger_price || !ts)
        return 1;
    if (!PyUnicode_CheckExact(id) || !PyUnicode_CheckExact(account) || !PyLong_CheckExact(pqty) ||
        !PyUnicode_CheckExact(side) ||
        !(pprice == Py_None || PyLong_CheckExact(pprice)) || !PyUnicode_CheckExact(t) ||
        !PyUnicode_CheckExact(tif_s) || !(stp_s == Py_None || PyUnicode_CheckExact(stp_s)) ||
        reduce_only != Py_False || ueq(t, S_STOP_LIMIT) || ueq(t, S_STOP_MARKET))
        return 1;
    int is_limit = ueq(t, S_LIMIT), is_market = !is_limit && ueq(t, S_MARKET);
    Py_hash_t h = str_hash(id);
    if (h == -1) return -1;
    int code = OK;
    int is_buy = 0, tif = TIF_BAD, stp = STP_NONE;
    int64_t qty = 0, price = 0;
    if (idx_find(b, id, h) >= 0) code = DUPLICATE_ORDER_ID;
    else if (PyUnicode_GET_LENGTH(id) == 0 || PyUnicode_GET_LENGTH(id) > MAX_ID_LEN) code = BAD_ID;
    else if (str_is(side, S_BUY)) is_buy = 1;
    else if (!str_is(side, S_SELL)) code = BAD_SIDE;
    if (code == OK) {
        if (as_i64(pqty, &qty) != 0 || qty <= 0 || qty > MAX_QTY) code = BAD_QTY;
        else if (qty % b->lot != 0) code = BAD_LOT;
        else if (qty < b->min_qty || qty > b->max_qty) code = BAD_QTY;
    }
    if (code == OK) {
        if (ueq(tif_s, S_GTC)) tif = TIF_GTC;
        else if (ueq(tif_s, S_IOC)) tif = TIF_IOC;
        else if (ueq(tif_s, S_FOK)) tif = TIF_FOK;
        else if (ueq(tif_s, S_POST_ONLY)) tif = TIF_POST_ONLY;
        if (tif == TIF_BAD) code = BAD_ORDER_TYPE;
        else if (is_limit) {
            if (pprice == Py_None || as_i64(pprice, &price) != 0 || price <= 0 || price >= MAX_PRICE)
                code = BAD_PRICE;
            else if (price % b->tick != 0) code = BAD_TICK;
            else if (price < b->band_lo || price > b->band_hi) code = OUTSIDE_BAND;
        } else if (is_market) {
            if (pprice != Py_None) code = BAD_PRICE;
            else if (tif == TIF_POST_ONLY) code = BAD_ORDER_TYPE;
        } else {
            code = BAD_ORDER_TYPE;
        }
        if (code == OK && trigger_price != Py_None) code = BAD_ORDER_TYPE;
    }
    if (code == OK && stp_s != Py_None) {
        if (ueq(stp_s, S_CANCEL_TAKER)) stp = STP_CANCEL_TAKER;
        else if (ueq(stp_s, S_CANCEL_MAKER)) stp = STP_CANCEL_MAKER;
        else if (ueq(stp_s, S_CANCEL_BOTH)) stp = STP_CANCEL_BOTH;
        else code = BAD_ORDER_TYPE;
    }
    if (code == OK && b->live >= MAX_LIVE_ORDERS) code = BOOK_FULL;
    if (code != OK) return reject_explained(b, id, code, c);

    int64_t limit = is_market ? 0 : price;
    if (tif == TIF_POST_ONLY) {
        int has;
        int64_t best = best_price(b, is_buy ? 1 : 0, &has);
        if (has && (is_buy ? best <= limit : best >= limit))
            return reject_explained(b, id, POST_ONLY_WOULD_TAKE, c);
    } else if (tif == TIF_FOK) {
        int64_t bound = is_market ? protection_bound(b, is_buy) : (is_buy ? -limit : limit);
        if (!fillable(b, account, is_buy, bound, qty, stp))
            return reject_explained(b, id, FOK_UNFILLABLE, c);
    }
    int64_t oid = b->next_oid++;
    {
        PyObject *seq = PyLong_FromLongLong(++b->seq);
        PyObject *poid = PyLong_FromLongLong(oid);
        int r = -1;
        if (seq && poid) {
            PyObject *args[7] = {seq, id, poid, account, side, pqty, pprice};
            r = emit(b, T_ACCEPTED, args, 7);
        }
        Py_XDECREF(seq);
        Py_XDECREF(poid);
        if (r < 0) return -1;
    }
    int64_t bound = is_market ? protection_bound(b, is_buy) : (is_buy ? -limit : limit);
    int64_t remaining = match(b, id, account, is_buy, bound, qty, stp, ts);
    if (remaining < 0) return -1;
    if (remaining == 0) return 0;
    PyObject *reason;
    if (b->halt) reason = S_STP;
    else if (is_market) reason = b->side[is_buy ? 1 : 0].n ? S_MKT_PROT : S_MKT_NOLIQ;
    else if (tif == TIF_IOC) reason = S_R_IOC;
    else if (tif == TIF_FOK) reason = S_R_FOK;
    else {
        return rest(b, oid, id, h, account, is_buy, limit, remaining, tif == TIF_POST_ONLY, stp) < 0
                   ? -1 : 0;
    }
    return emit_cancelled(b, id, remaining, reason);
}

static int on_cancel(Core *b, PyObject *c) {
    PyObject *id = FIELD(c, OFF_CANCEL_ID), *account = FIELD(c, OFF_CANCEL_ACCOUNT);
    if (!id || !account || !PyUnicode_CheckExact(id) ||
        !(account == Py_None || PyUnicode_CheckExact(account)))
        return 1;
    Py_hash_t h = str_hash(id);
    if (h == -1) return -1;
    int32_t o = idx_find(b, id, h);
    if (o >= 0 && (account == Py_None || ueq(account, b->o_acct[o]))) {
        int64_t qty = b->o_qty[o];
        unlink_order(b, o);
        release(b, o);
        /* the command's id equals the stored one */
        return emit_cancelled(b, id, qty, S_USER);
    }
    PyObject *msg = PyUnicode_FromFormat("no live order with id %R", id);
    if (msg == NULL) return -1;
    int r = emit_rejected(b, id, UNKNOWN_ORDER, msg);
    Py_DECREF(msg);
    return r;
}

static int cmp_oid_core_sort(const void *a, const void *b) {
    const int64_t *x = a, *y = b; /* pairs (oid, handle) */
    return (x[0] > y[0]) - (x[0] < y[0]);
}

static int on_cancel_all(Core *b, PyObject *c) {
    PyObject *account = FIELD(c, OFF_CANCEL_ALL_ACCOUNT);
    if (!account || !PyUnicode_CheckExact(account)) return 1;
    Py_ssize_t n = 0;
    for (Py_ssize_t o = 0; o < b->o_cap; o++)
        if (b->o_level[o] >= 0 && ueq(b->o_acct[o], account)) n++;
    if (n == 0) return 0;
    int64_t *pairs = PyMem_Malloc((size_t)n * 16);
    if (pairs == NULL) { PyErr_NoMemory(); return -1; }
    Py_ssize_t k = 0;
    for (Py_ssize_t o = 0; o < b->o_cap; o++)
        if (b->o_level[o] >= 0 && ueq(b->o_acct[o], account)) {
            pairs[2 * k] = b->o_oid[o];
            pairs[2 * k + 1] = o;
            k++;
        }
    qsort(pairs, (size_t)n, 16, cmp_oid_core_sort);
    int r = 0;
    for (k = 0; k < n && r == 0; k++) {
        int32_t o = (int32_t)pairs[2 * k + 1];
        int64_t qty = b->o_qty[o];
        PyObject *oid_s = key_new_ref(b, o);
        if (oid_s == NULL) { r = -1; break; }
        unlink_order(b, o);
        release(b, o);
        r = emit_cancelled(b, oid_s, qty, S_CANCEL_ALL);
        Py_DECREF(oid_s);
    }
    PyMem_Free(pairs);
    return r;
}

static int on_amend(Core *b, PyObject *c) {
    PyObject *id = FIELD(c, OFF_AMEND_ID), *pqty = FIELD(c, OFF_AMEND_QTY),
             *pprice = FIELD(c, OFF_AMEND_PRICE), *account = FIELD(c, OFF_AMEND_ACCOUNT),
             *ts = FIELD(c, OFF_AMEND_TS);
    if (!id || !pqty || !pprice || !account || !ts || !PyUnicode_CheckExact(id) ||
        !(account == Py_None || PyUnicode_CheckExact(account)) ||
        !(pqty == Py_None || PyLong_CheckExact(pqty)) ||
        !(pprice == Py_None || PyLong_CheckExact(pprice)))
        return 1;
    Py_hash_t h = str_hash(id);
    if (h == -1) return -1;
    int32_t o = idx_find(b, id, h);
    if (o < 0 || (account != Py_None && !ueq(account, b->o_acct[o]))) {
        PyObject *msg = PyUnicode_FromFormat("no resting order with id %R", id);
        if (msg == NULL) return -1;
        int r = emit_rejected(b, id, UNKNOWN_ORDER, msg);
        Py_DECREF(msg);
        return r;
    }
    int64_t oqty = b->o_qty[o], oprice = b->l_price[b->o_level[o]];
    uint8_t flags = b->o_flags[o];
    int is_buy = flags & 1, post_only = (flags >> 1) & 1, stp = flags >> 2;
    PyObject *qty_obj = pqty == Py_None ? PyLong_FromLongLong(oqty) : Py_NewRef(pqty);
    PyObject *price_obj = pprice == Py_None ? PyLong_FromLongLong(oprice) : Py_NewRef(pprice);
    PyObject *acct = NULL;
    int r = -1;
    if (qty_obj == NULL || price_obj == NULL) goto done;
    int code = OK;
    int64_t qty = 0, price = 0;
    if (pqty == Py_None && pprice == Py_None) {
        code = 3018; /* invalid_command */
    } else if (as_i64(qty_obj, &qty) != 0 || qty <= 0 || qty > MAX_QTY) {
        code = BAD_QTY;
    } else if (qty % b->lot != 0) {
        code = BAD_LOT;
    } else if (qty < b->min_qty || qty > b->max_qty) {
        code = BAD_QTY;
    } else {
        int ov = as_i64(price_obj, &price);
        if (ov == 0 && price == oprice) code = OK;
        else if (ov != 0 || price <= 0 || price >= MAX_PRICE) code = BAD_PRICE;
        else if (price % b->tick != 0) code = BAD_TICK;
        else if (price < b->band_lo || price > b->band_hi) code = OUTSIDE_BAND;
        else if (post_only) {
            int has;
            int64_t best = best_price(b, is_buy ? 1 : 0, &has);
            if (has && (is_buy ? best <= price : best >= price)) code = POST_ONLY_WOULD_TAKE;
        }
    }
    if (code != OK) {
        PyObject *c_code = PyLong_FromLong(code);
        if (c_code == NULL) goto done;
        PyObject *msg = PyObject_CallFunctionObjArgs(b->explain, c_code, c, price_obj, qty_obj,
                                                     NULL);
        Py_DECREF(c_code);
        if (msg == NULL) goto done;
        r = emit_rejected(b, id, code, msg);
        Py_DECREF(msg);
        goto done;
    }
    if (price == oprice && qty <= oqty) {
        int32_t l = b->o_level[o];
        b->l_total[l] -= oqty - qty;
        b->o_qty[o] = qty;
        PyObject *seq = PyLong_FromLongLong(++b->seq);
        if (seq == NULL) goto done;
        PyObject *args[5] = {seq, id, price_obj, qty_obj, Py_True};
        r = emit(b, T_AMENDED, args, 5);
        Py_DECREF(seq);
        goto done;
    }
    /* Re-price or grow: out of the book, then it trades like a new order
     * and rests at the back with its own oid. */
    int64_t ooid = b->o_oid[o];
    acct = Py_NewRef(b->o_acct[o]);
    unlink_order(b, o);
    release(b, o);
    {
        PyObject *seq = PyLong_FromLongLong(++b->seq);
        if (seq == NULL) goto done;
        PyObject *args[5] = {seq, id, price_obj, qty_obj, Py_False};
        r = emit(b, T_AMENDED, args, 5);
        Py_DECREF(seq);
        if (r < 0) goto done;
    }
    r = -1;
    int64_t remaining = match(b, id, acct, is_buy, is_buy ? -price : price, qty, stp, ts);
    if (remaining < 0) goto done;
    if (remaining == 0) { r = 0; goto done; }
    if (b->halt) { r = emit_cancelled(b, id, remaining, S_STP); goto done; }
    r = rest(b, ooid, id, h, acct, is_buy, price, remaining, post_only, stp) < 0 ? -1 : 0;
done:
    Py_XDECREF(qty_obj);
    Py_XDECREF(price_obj);
    Py_XDECREF(acct);
    return r;
}

/* 0 handled, 1 the wrapper must handle it, -1 error */
static int process_one(Core *b, PyObject *cmd) {
    PyTypeObject *t = Py_TYPE(cmd);
    if (b->events == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "core cleared");
        return -1;
    }
    if (t == T_NEW) return on_new(b, cmd);
    if (t == T_CANCEL) return on_cancel(b, cmd);
    if (t == T_CANCEL_ALL) return on_cancel_all(b, cmd);
    if (t == T_AMEND && T_AMEND != NULL) return on_amend(b, cmd);
    return 1;
}

/* -------------------------------------------------------- Python type */

static PyObject *Core_process(Core *b, PyObject *cmd) {
    /* process(cmd): the whole of FastBook.process() */
    if (b->delegate != NULL) return PyObject_CallOneArg(b->delegate, cmd);
    int r = process_one(b, cmd);
    if (r < 0) return NULL;
    if (r == 1) {
        if (b->slow == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "no slow path set");
            return NULL;
        }
        return PyObject_CallOneArg(b->slow, cmd);
    }
    Py_RETURN_NONE;
}

static PyObject *Core_set_json(Core *b, PyObject *arg) {
    /* set_json(on): events as JSON lines into the core's buffer (take_json()) */
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (on && (ENCODE == NULL || N_FORMATS == 0)) {
        PyErr_SetString(PyExc_RuntimeError, "call configure_json() first");
        return NULL;
    }
    b->json = on;
    Py_RETURN_NONE;
}

static PyObject *Core_take_json(Core *b, PyObject *unused) {
    PyObject *out = PyBytes_FromStringAndSize(b->jbuf ? b->jbuf : "", b->jlen);
    if (out != NULL) b->jlen = 0;
    return out;
}

static PyObject *Core_append_event(Core *b, PyObject *ev) {
    /* an event made outside the core, in order with the core's own */
    if (!b->json) {
        if (PyList_Append(b->events, ev) < 0) return NULL;
    } else if (jbuf_put_encoded(b, ev) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Core_set_paths(Core *b, PyObject *args) {
    /* set_paths(slow, delegate): delegate None while the C core runs the book */
    PyObject *slow, *delegate;
    if (!PyArg_ParseTuple(args, "OO", &slow, &delegate)) return NULL;
    Py_INCREF(slow);
    Py_XSETREF(b->slow, slow);
    if (delegate == Py_None) {
        Py_CLEAR(b->delegate);
    } else {
        Py_INCREF(delegate);
        Py_XSETREF(b->delegate, delegate);
    }
    Py_RETURN_NONE;
}

static PyObject *Core_process_many(Core *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "process_many(list, start)");
        return NULL;
    }
    PyObject *cmds = args[0];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    for (; i < PyList_GET_SIZE(cmds); i++) {
        PyObject *cmd = PyList_GET_ITEM(cmds, i);
        Py_INCREF(cmd);
        int r = process_one(b, cmd);
        Py_DECREF(cmd);
        if (r < 0) return NULL;
        if (r == 1) break;
    }
    return PyLong_FromSsize_t(i);
}

static PyObject *order_tuple(Core *b, int32_t o) {
    uint8_t f = b->o_flags[o];
    PyObject *id = key_new_ref(b, o);
    if (id == NULL) return NULL;
    return Py_BuildValue("(LNOOLLOiO)", (long long)b->o_oid[o], id, b->o_acct[o],
                         (f & 1) ? S_BUY : S_SELL, (long long)b->l_price[b->o_level[o]],
                         (long long)b->o_qty[o], (f & 2) ? Py_True : Py_False, (int)(f >> 2),
                         Py_False);
}

static PyObject *Core_resting(Core *b, PyObject *arg) {
    /* resting(is_bid) -> [(oid, id, account, side, price, qty, post_only, stp, reduce_only)] best first */
    int s = PyObject_IsTrue(arg) ? 0 : 1;
    Side *sd = &b->side[s];
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = sd->n - 1; i >= 0; i--) {
        for (int32_t o = b->l_head[sd->lvl[i]]; o >= 0; o = b->o_next[o]) {
            PyObject *t = order_tuple(b, o);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(t);
        }
    }
    return out;
}

static PyObject *Core_get(Core *b, PyObject *id) {
    if (!PyUnicode_CheckExact(id)) Py_RETURN_NONE;
    Py_hash_t h = str_hash(id);
    if (h == -1) return NULL;
    int32_t o = idx_find(b, id, h);
    if (o < 0) Py_RETURN_NONE;
    return order_tuple(b, o);
}

static PyObject *Core_depth(Core *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "depth(is_bid, n)"); return NULL; }
    int s = PyObject_IsTrue(args[0]) ? 0 : 1;
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    Side *sd = &b->side[s];
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = sd->n - 1; i >= 0 && i > sd->n - 1 - n; i--) {
        int32_t l = sd->lvl[i];
        PyObject *t = Py_BuildValue("(LLi)", (long long)b->l_price[l], (long long)b->l_total[l],
                                    (int)b->l_count[l]);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    return out;
}

static PyObject *Core_best(Core *b, PyObject *arg) {
    int has;
    int64_t p = best_price(b, PyObject_IsTrue(arg) ? 0 : 1, &has);
    if (!has) Py_RETURN_NONE;
    return PyLong_FromLongLong(p);
}

static PyObject *Core_rest_order(Core *b, PyObject *args) {
    /* rest_order(oid, id, account, is_buy, price, qty, post_only, stp): for from_state */
    long long oid, price, qty;
    PyObject *id, *account;
    int is_buy, post_only, stp;
    if (!PyArg_ParseTuple(args, "LUUpLLpi", &oid, &id, &account, &is_buy, &price, &qty,
                          &post_only, &stp))
        return NULL;
    if (price <= 0 || price >= MAX_PRICE || qty <= 0 || qty > b->max_qty || stp < 0 || stp > 3 ||
        !PyUnicode_CheckExact(id) || !PyUnicode_CheckExact(account)) {
        PyErr_SetString(PyExc_ValueError, "resting order out of range");
        return NULL;
    }
    Py_hash_t h = str_hash(id);
    if (h == -1) return NULL;
    if (idx_find(b, id, h) >= 0) {
        PyErr_Format(PyExc_ValueError, "duplicate resting order id %R", id);
        return NULL;
    }
    if (rest(b, oid, id, h, account, is_buy, price, qty, post_only, stp) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_set_reference(Core *b, PyObject *arg) {
    if (arg == Py_None) { set_reference(b, 0, 0); Py_RETURN_NONE; }
    long long p = PyLong_AsLongLong(arg);
    if (p == -1 && PyErr_Occurred()) return NULL;
    set_reference(b, 1, p);
    Py_RETURN_NONE;
}

static PyObject *corrupt(const char *msg) {
    PyErr_SetString(PyExc_AssertionError, msg);
    return NULL;
}

static PyObject *Core_check(Core *b, PyObject *unused) {
    /* validate_internal_state: raise AssertionError on a broken invariant */
    Py_ssize_t counted = 0;
    for (int s = 0; s < 2; s++) {
        Side *sd = &b->side[s];
        for (Py_ssize_t i = 0; i < sd->n; i++) {
            if (i + 1 < sd->n && sd->keys[i] >= sd->keys[i + 1])
                return corrupt("price keys not strictly ascending");
            int32_t l = sd->lvl[i];
            if ((s == 0 ? b->l_price[l] : -b->l_price[l]) != sd->keys[i])
                return corrupt("level key and price disagree");
            int64_t total = 0;
            int32_t count = 0, prev = -1;
            for (int32_t o = b->l_head[l]; o >= 0; o = b->o_next[o]) {
                if (b->o_prev[o] != prev || b->o_level[o] != l) return corrupt("order links broken");
                if (b->o_qty[o] <= 0 ||
                    (b->o_flags[o] & 1) != (s == 0))
                    return corrupt("order misplaced");
                PyObject *id = key_new_ref(b, o);
                if (id == NULL) return NULL;
                Py_hash_t h = str_hash(id);
                int32_t found = h == -1 ? -1 : idx_find(b, id, h);
                Py_DECREF(id);
                if (h == -1 && PyErr_Occurred()) return NULL;
                if (found != o || key_hash(b, o) != h) return corrupt("order index broken");
                total += b->o_qty[o];
                count++;
                prev = o;
            }
            if (b->l_tail[l] != prev || count == 0) return corrupt("level tail broken or empty");
            if (total != b->l_total[l] || count != b->l_count[l])
                return corrupt("level total/count disagree with its orders");
            counted += count;
        }
    }
    if (counted != b->live || (Py_ssize_t)b->idx_used != b->live)
        return corrupt("orders in levels, index and live count disagree");
    int hb, ha;
    int64_t bid = best_price(b, 0, &hb), ask = best_price(b, 1, &ha);
    if (hb && ha && bid >= ask) return corrupt("book crossed");
    Py_RETURN_NONE;
}

static PyObject *Core_ids(Core *b, PyObject *unused) {
    /* live ids in priority order: bids best first, then asks */
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int s = 0; s < 2; s++) {
        Side *sd = &b->side[s];
        for (Py_ssize_t i = sd->n - 1; i >= 0; i--)
            for (int32_t o = b->l_head[sd->lvl[i]]; o >= 0; o = b->o_next[o])
            {
                PyObject *id = key_new_ref(b, o);
                if (id == NULL || PyList_Append(out, id) < 0) {
                    Py_XDECREF(id);
                    Py_DECREF(out);
                    return NULL;
                }
                Py_DECREF(id);
            }
    }
    return out;
}

static PyObject *Core_memory(Core *b, PyObject *unused) {
    /* bytes of C storage (orders, index, levels, sides) */
    size_t n = (size_t)b->o_cap * (8 * 2 + 4 * 3 + 1 + KEY_SIZE + sizeof(PyObject *));
    if (b->idx) n += (b->idx_mask + 1) * 8;
    n += (size_t)b->l_cap * (8 * 2 + 4 * 3 + sizeof(PyObject *));
    n += (size_t)(b->side[0].cap + b->side[1].cap) * 12;
    return PyLong_FromSize_t(n);
}

static int Core_init(Core *b, PyObject *args, PyObject *kw) {
    long long tick, lot, min_qty, max_qty, band_bps;
    PyObject *events, *explain;
    if (!PyArg_ParseTuple(args, "LLLLLO!O", &tick, &lot, &min_qty, &max_qty, &band_bps,
                          &PyList_Type, &events, &explain))
        return -1;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "call configure() first");
        return -1;
    }
    if (tick <= 0 || lot <= 0 || min_qty <= 0 || max_qty < min_qty || band_bps < 0 ||
        band_bps > 10000 || (__int128)max_qty * MAX_LIVE_ORDERS >= (__int128)INT64_MAX) {
        PyErr_SetString(PyExc_ValueError, "instrument outside the C core's limits");
        return -1;
    }
    b->tick = tick; b->lot = lot; b->min_qty = min_qty; b->max_qty = max_qty;
    b->band_bps = band_bps;
    set_reference(b, 0, 0);
    b->seq = 0;
    b->next_oid = 1;
    Py_INCREF(events);
    Py_XSETREF(b->events, events);
    Py_INCREF(explain);
    Py_XSETREF(b->explain, explain);
    if (b->accounts == NULL && (b->accounts = PyDict_New()) == NULL) return -1;
    b->o_free = -1;
    b->l_free = -1;
    return 0;
}

static int Core_traverse(Core *b, visitproc visit, void *arg) {
    Py_VISIT(b->events);
    Py_VISIT(b->explain);
    Py_VISIT(b->accounts);
    Py_VISIT(b->slow);
    Py_VISIT(b->delegate);
    return 0;
}

static int Core_clear(Core *b) {
    Py_CLEAR(b->events);
    Py_CLEAR(b->explain);
    Py_CLEAR(b->accounts);
    Py_CLEAR(b->slow);
    Py_CLEAR(b->delegate);
    return 0;
}

static void Core_dealloc(Core *b) {
    PyObject_GC_UnTrack(b);
    for (Py_ssize_t o = 0; o < b->o_cap; o++) {
        if (b->o_level[o] >= 0) key_clear(b, o);
        Py_XDECREF(b->o_acct[o]);
    }
    for (Py_ssize_t l = 0; l < b->l_cap; l++) Py_XDECREF(b->l_pyprice[l]);
    PyMem_Free(b->o_oid); PyMem_Free(b->o_qty);
    PyMem_Free(b->o_prev); PyMem_Free(b->o_next); PyMem_Free(b->o_level);
    PyMem_Free(b->o_flags); PyMem_Free(b->o_key); PyMem_Free(b->o_acct);
    PyMem_Free(b->idx);
    PyMem_Free(b->l_price); PyMem_Free(b->l_total); PyMem_Free(b->l_head);
    PyMem_Free(b->l_tail); PyMem_Free(b->l_count); PyMem_Free(b->l_pyprice);
    for (int s = 0; s < 2; s++) { PyMem_Free(b->side[s].keys); PyMem_Free(b->side[s].lvl); }
    PyMem_Free(b->jbuf);
    Core_clear(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *Core_get_events(Core *b, void *c) {
    if (b->events == NULL) Py_RETURN_NONE;
    Py_INCREF(b->events);
    return b->events;
}
static int Core_set_events(Core *b, PyObject *v, void *c) {
    if (v == NULL || !PyList_CheckExact(v)) {
        PyErr_SetString(PyExc_TypeError, "events must be a list");
        return -1;
    }
    Py_INCREF(v);
    Py_SETREF(b->events, v);
    return 0;
}
static PyObject *Core_get_ref(Core *b, void *c) {
    if (!b->has_ref) Py_RETURN_NONE;
    return PyLong_FromLongLong(b->ref);
}

static PyMemberDef Core_members[] = {
    {"seq", T_LONGLONG, offsetof(Core, seq), 0, "last event seq"},
    {"next_oid", T_LONGLONG, offsetof(Core, next_oid), 0, "next order number"},
    {"live", T_PYSSIZET, offsetof(Core, live), READONLY, "resting orders"},
    {"band_lo", T_LONGLONG, offsetof(Core, band_lo), READONLY, "lowest price in band"},
    {"band_hi", T_LONGLONG, offsetof(Core, band_hi), READONLY, "highest price in band"},
    {NULL}
};

static PyGetSetDef Core_getset[] = {
    {"events", (getter)Core_get_events, (setter)Core_set_events, "event list", NULL},
    {"reference_price", (getter)Core_get_ref, NULL, "reference price or None", NULL},
    {NULL}
};

static PyMethodDef Core_methods[] = {
    {"process", (PyCFunction)Core_process, METH_O, "process(cmd)"},
    {"set_paths", (PyCFunction)Core_set_paths, METH_VARARGS, "set_paths(slow, delegate)"},
    {"set_json", (PyCFunction)Core_set_json, METH_O, "events as JSON lines (take_json)"},
    {"take_json", (PyCFunction)Core_take_json, METH_NOARGS, "the pending JSON lines"},
    {"append_event", (PyCFunction)Core_append_event, METH_O, "emit an event made outside"},
    {"process_many", (PyCFunction)(void (*)(void))Core_process_many, METH_FASTCALL,
     "process_many(cmds, start) -> index of the first command not handled"},
    {"resting", (PyCFunction)Core_resting, METH_O, "resting orders of a side, best first"},
    {"get", (PyCFunction)Core_get, METH_O, "order tuple by id, or None"},
    {"depth", (PyCFunction)(void (*)(void))Core_depth, METH_FASTCALL, "L2 levels"},
    {"best", (PyCFunction)Core_best, METH_O, "best price of a side"},
    {"rest_order", (PyCFunction)Core_rest_order, METH_VARARGS, "rest an order (restore)"},
    {"set_reference", (PyCFunction)Core_set_reference, METH_O, "set the reference price"},
    {"check", (PyCFunction)Core_check, METH_NOARGS, "check the invariants"},
    {"ids", (PyCFunction)Core_ids, METH_NOARGS, "live ids in priority order"},
    {"memory", (PyCFunction)Core_memory, METH_NOARGS, "bytes of C storage"},
    {NULL}
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exchange.engine._ccore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_free = PyObject_GC_Del,
    .tp_doc = "C matching core (see fastbook.py)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
    .tp_getset = Core_getset,
};

/* ----------------------------------------------------------- configure */

static int member_offset(PyObject *type, const char *name, Py_ssize_t *out) {
    PyObject *d = PyObject_GetAttrString(type, name);
    if (d == NULL) return -1;
    if (Py_TYPE(d) != &PyMemberDescr_Type) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s is not a slot", name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s is not an object slot", name);
        return -1;
    }
    *out = m->offset;
    Py_DECREF(d);
    return 0;
}

static PyObject *configure(PyObject *mod, PyObject *args) {
    PyObject *new_t, *cancel_t, *cancel_all_t, *accepted, *trade, *cancelled, *rejected, *reasons;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOOO!", &PyType_Type, &new_t, &PyType_Type, &cancel_t,
                          &PyType_Type, &cancel_all_t, &accepted, &trade, &cancelled, &rejected,
                          &PyDict_Type, &reasons))
        return NULL;
    static const char *new_fields[12] = {"id", "account", "side", "qty", "type", "price", "tif",
                                         "stp", "reduce_only", "trigger_price", "trigger", "ts"};
    for (int i = 0; i < 12; i++)
        if (member_offset(new_t, new_fields[i], &OFF_NEW[i]) < 0) return NULL;
    if (member_offset(cancel_t, "id", &OFF_CANCEL_ID) < 0 ||
        member_offset(cancel_t, "account", &OFF_CANCEL_ACCOUNT) < 0 ||
        member_offset(cancel_all_t, "account", &OFF_CANCEL_ALL_ACCOUNT) < 0)
        return NULL;
    Py_INCREF(new_t); Py_INCREF(cancel_t); Py_INCREF(cancel_all_t);
    Py_INCREF(accepted); Py_INCREF(trade); Py_INCREF(cancelled); Py_INCREF(rejected);
    Py_INCREF(reasons);
    T_NEW = (PyTypeObject *)new_t;
    T_CANCEL = (PyTypeObject *)cancel_t;
    T_CANCEL_ALL = (PyTypeObject *)cancel_all_t;
    T_ACCEPTED = accepted; T_TRADE = trade; T_CANCELLED = cancelled; T_REJECTED = rejected;
    REASONS = reasons;
    configured = 1;
    Py_RETURN_NONE;
}

static PyObject *jsonl_lines(PyObject *mod, PyObject *arg) {
    /* jsonl_lines(data) -> the number of lines when every line of `data`
     * (which ends with a newline) starts with '{' and ends with '}', else -1 */
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &p, &n) < 0) return NULL;
    const char *end = p + n, *line = p;
    Py_ssize_t lines = 0;
    while (line < end) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (nl == NULL || nl - line < 2 || line[0] != '{' || nl[-1] != '}')
            return PyLong_FromLong(-1);
        lines++;
        line = nl + 1;
    }
    return PyLong_FromSsize_t(lines);
}

static PyObject *configure_json(PyObject *mod, PyObject *args) {
    /* configure_json(encode, ((EventType, (fragment bytes, ...)), ...)) */
    PyObject *encode, *formats;
    if (!PyArg_ParseTuple(args, "OO!", &encode, &PyTuple_Type, &formats)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(formats);
    if (n > 8) { PyErr_SetString(PyExc_ValueError, "at most 8 formats"); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *type, *frags;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(formats, i), "OO!", &type, &PyTuple_Type, &frags))
            return NULL;
        Py_ssize_t k = PyTuple_GET_SIZE(frags);
        if (k > MAX_EVENT_FIELDS) { PyErr_SetString(PyExc_ValueError, "too many fields"); return NULL; }
        for (Py_ssize_t j = 0; j < k; j++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(frags, j))) {
                PyErr_SetString(PyExc_TypeError, "fragments must be bytes");
                return NULL;
            }
    }
    for (Py_ssize_t i = 0; i < N_FORMATS; i++) {
        Py_CLEAR(FORMATS[i].type);
        for (Py_ssize_t j = 0; j < FORMATS[i].n; j++) Py_CLEAR(FORMATS[i].frag[j]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(formats, i);
        PyObject *frags = PyTuple_GET_ITEM(item, 1);
        FORMATS[i].type = Py_NewRef(PyTuple_GET_ITEM(item, 0));
        FORMATS[i].n = PyTuple_GET_SIZE(frags);
        for (Py_ssize_t j = 0; j < FORMATS[i].n; j++)
            FORMATS[i].frag[j] = Py_NewRef(PyTuple_GET_ITEM(frags, j));
    }
    N_FORMATS = n;
    Py_INCREF(encode);
    Py_XSETREF(ENCODE, encode);
    Py_RETURN_NONE;
}

static PyObject *configure_amend(PyObject *mod, PyObject *args) {
    /* configure_amend(Amend, Amended): amends run in C from now on */
    PyObject *amend_t, *amended;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &amend_t, &amended)) return NULL;
    if (member_offset(amend_t, "id", &OFF_AMEND_ID) < 0 ||
        member_offset(amend_t, "qty", &OFF_AMEND_QTY) < 0 ||
        member_offset(amend_t, "price", &OFF_AMEND_PRICE) < 0 ||
        member_offset(amend_t, "account", &OFF_AMEND_ACCOUNT) < 0 ||
        member_offset(amend_t, "ts", &OFF_AMEND_TS) < 0)
        return NULL;
    Py_INCREF(amended);
    Py_XSETREF(T_AMENDED, amended);
    Py_INCREF(amend_t);
    Py_XSETREF(T_AMEND, (PyTypeObject *)amend_t);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure_amend", configure_amend, METH_VARARGS, "configure_amend(Amend, Amended)"},
    {"configure_json", configure_json, METH_VARARGS, "configure_json(encode, formats)"},
    {"jsonl_lines", jsonl_lines, METH_O, "lines of plain one-object-per-line JSONL, or -1"},
    {"configure", configure, METH_VARARGS,
     "configure(NewOrder, Cancel, CancelAll, Accepted, Trade, Cancelled, Rejected, REASONS)"},
    {NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "exchange.engine._ccore", "C matching core", -1, module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__ccore(void) {
    INTERN(S_BUY, "buy"); INTERN(S_SELL, "sell"); INTERN(S_LIMIT, "limit");
    INTERN(S_MARKET, "market"); INTERN(S_STOP_LIMIT, "stop_limit");
    INTERN(S_STOP_MARKET, "stop_market"); INTERN(S_GTC, "GTC"); INTERN(S_IOC, "IOC");
    INTERN(S_FOK, "FOK"); INTERN(S_POST_ONLY, "POST_ONLY");
    INTERN(S_CANCEL_TAKER, "cancel_taker"); INTERN(S_CANCEL_MAKER, "cancel_maker");
    INTERN(S_CANCEL_BOTH, "cancel_both"); INTERN(S_USER, "user"); INTERN(S_STP, "stp");
    INTERN(S_R_IOC, "ioc"); INTERN(S_R_FOK, "fok"); INTERN(S_MKT_PROT, "market_protection");
    INTERN(S_MKT_NOLIQ, "market_no_liquidity"); INTERN(S_CANCEL_ALL, "cancel_all");
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_SHA256", CCORE_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
