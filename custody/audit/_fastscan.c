/*
 * The audit verifier's compiled fast path over entries.jsonl (optional; see fastscan.py).
 *
 * Scanner.scan(lines, start) walks the lines of one batch. For each line it
 * recomputes the chain hash (SHA-256 over the domain, the previous hash and the
 * entry bytes), the RFC 6962 leaf hash and the Merkle frontier, parses the
 * entry against the one canonical byte template of a transfer entry, and
 * replays it into state kept in C: a hash table of the accounts it has used
 * (int64 balances, checked for overflow), per-asset total deltas, and the
 * transfer ids (an IdSet, which the pure verifier uses as its id set too).
 * Holds stay in the verifier's Python dict. The Python account lists and
 * totals remain the state of record: scan() writes what it changed back into
 * them before it hands a line over (flush() at the end of the file), and
 * re-reads an account the pure verifier changed.
 *
 * It only ever accepts a line when every check the pure verifier makes on it
 * passes: a line with anything else (a stored hash that does not match, an
 * escape in a string, an integer or amount over 18 digits, a balance past
 * int64, an open entry, a sequence
 * anomaly, an unknown account, a reused id, a pending that does not fit, a
 * balance constraint broken, a checkpoint or snapshot stop next) is left
 * untouched and its index returned, and the pure verifier handles that line
 * (reporting whatever is wrong) before calling scan again. So the fast path
 * can only make verification faster, never more lenient: a differential test
 * (tests/custody/audit/test_fastscan.py) holds the two reports identical.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <openssl/sha.h>

#define MAX_DEPTH 64
#define MAX_INT_DIGITS 18

static const char DOMAIN[] = "strongroom.ledger.entry.v1";  /* + the NUL: 27 bytes */
#define DOMAIN_LEN 27


typedef struct {
    const char *p;
    const char *end;
} Cursor;

static int lit(Cursor *c, const char *s, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0) return 0;
    c->p += n;
    return 1;
}
#define LIT(c, s) lit((c), (s), sizeof(s) - 1)

/* A JSON string with no escapes: printable ASCII except '"' and '\' (what canonical form writes as is). */
static int str(Cursor *c, const char **start, Py_ssize_t *len) {
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *s = ++c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *start = s;
            *len = c->p - s;
            c->p++;
            return 1;
        }
        if (ch < 0x20 || ch > 0x7e || ch == '\\') return 0;
        c->p++;
    }
    return 0;
}

/* A canonical integer: 0 or -?[1-9][0-9]{0,17}. */
static int integer(Cursor *c, long long *out) {
    int negative = 0;
    if (c->p < c->end && *c->p == '-') {
        negative = 1;
        c->p++;
    }
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
    if (*c->p == '0') {
        c->p++;
        if (negative || (c->p < c->end && *c->p >= '0' && *c->p <= '9')) return 0;
        *out = 0;
        return 1;
    }
    long long value = 0;
    int digits = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (++digits > MAX_INT_DIGITS) return 0;
        value = value * 10 + (*c->p - '0');
        c->p++;
    }
    *out = negative ? -value : value;
    return 1;
}

static int null_or_int(Cursor *c, long long *out, int *is_null) {
    if (LIT(c, "null")) {
        *is_null = 1;
        return 1;
    }
    *is_null = 0;
    return integer(c, out);
}

static int is_alnum(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
}

/* ^(user|service):[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$ */
static int valid_actor(const char *s, Py_ssize_t n) {
    Py_ssize_t prefix;
    if (n >= 5 && memcmp(s, "user:", 5) == 0) prefix = 5;
    else if (n >= 8 && memcmp(s, "service:", 8) == 0) prefix = 8;
    else return 0;
    Py_ssize_t rest = n - prefix;
    if (rest < 1 || rest > 128 || !is_alnum((unsigned char)s[prefix])) return 0;
    for (Py_ssize_t i = prefix + 1; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(is_alnum(ch) || ch == '.' || ch == '_' || ch == ':' || ch == '@' || ch == '-')) return 0;
    }
    return 1;
}

typedef struct {
    const char *actor, *amount, *asset, *id, *kind, *pending_id, *reference;
    Py_ssize_t actor_n, amount_n, asset_n, id_n, kind_n, pending_id_n, reference_n;
    long long code, credit, debit, expires, seq, timeout, timestamp;
    int expires_null, pending_null;
} Fields;

/* Parse the canonical transfer-entry template; 0 if the bytes are anything else. */
static int parse(const char *raw, Py_ssize_t n, Fields *f) {
    Cursor c = {raw, raw + n};
    if (!LIT(&c, "{\"actor\":") || !str(&c, &f->actor, &f->actor_n)) return 0;
    if (!LIT(&c, ",\"amount\":") || !str(&c, &f->amount, &f->amount_n)) return 0;
    if (!LIT(&c, ",\"asset\":") || !str(&c, &f->asset, &f->asset_n)) return 0;
    if (!LIT(&c, ",\"code\":") || !integer(&c, &f->code)) return 0;
    if (!LIT(&c, ",\"credit_account\":") || !integer(&c, &f->credit)) return 0;
    if (!LIT(&c, ",\"debit_account\":") || !integer(&c, &f->debit)) return 0;
    if (!LIT(&c, ",\"expires_ms\":") || !null_or_int(&c, &f->expires, &f->expires_null)) return 0;
    if (!LIT(&c, ",\"id\":") || !str(&c, &f->id, &f->id_n)) return 0;
    if (!LIT(&c, ",\"kind\":") || !str(&c, &f->kind, &f->kind_n)) return 0;
    if (!LIT(&c, ",\"pending_id\":")) return 0;
    if (LIT(&c, "null")) {
        f->pending_null = 1;
    } else {
        f->pending_null = 0;
        if (!str(&c, &f->pending_id, &f->pending_id_n)) return 0;
    }
    if (!LIT(&c, ",\"reference\":") || !str(&c, &f->reference, &f->reference_n)) return 0;
    if (!LIT(&c, ",\"seq\":") || !integer(&c, &f->seq)) return 0;
    if (!LIT(&c, ",\"timeout_s\":") || !integer(&c, &f->timeout)) return 0;
    if (!LIT(&c, ",\"timestamp_ms\":") || !integer(&c, &f->timestamp)) return 0;
    if (!LIT(&c, ",\"v\":2}")) return 0;
    return c.p == c.end;
}

enum { K_SINGLE, K_PENDING, K_POST, K_VOID, K_EXPIRE, K_OTHER };

static int kind_of(const char *s, Py_ssize_t n) {
    if (n == 6 && memcmp(s, "single", 6) == 0) return K_SINGLE;
    if (n == 7 && memcmp(s, "pending", 7) == 0) return K_PENDING;
    if (n == 4 && memcmp(s, "post", 4) == 0) return K_POST;
    if (n == 4 && memcmp(s, "void", 4) == 0) return K_VOID;
    if (n == 6 && memcmp(s, "expire", 6) == 0) return K_EXPIRE;
    return K_OTHER;
}

static const char HEX[] = "0123456789abcdef";

static int hex_equal(const char *text, const unsigned char *digest) {
    for (int i = 0; i < 32; i++) {
        if (text[2 * i] != HEX[digest[i] >> 4] || text[2 * i + 1] != HEX[digest[i] & 15]) return 0;
    }
    return 1;
}

/* ---- The replay state in C ------------------------------------------------------------------
 *
 * Accounts the fast path has touched live in a C table with int64 balances (an account whose
 * balances do not fit, or an entry that would overflow one, is left to the pure verifier). The
 * Python lists stay the state of record: scan() writes the balances it changed back into them
 * before it hands a line to the pure verifier (which runs only between scan() calls), flush() at
 * the end of the file; each scan() re-validates a cached account the first time it uses it, by comparing the list's
 * items with the objects it last read or wrote (it holds references, so an unchanged pointer is an
 * unchanged value). Per-asset totals accumulate as deltas, added to the Python rows on the same
 * write-back. Transfer ids live in an IdSet (below), which the pure verifier uses as its set.
 */

#define MAX_ASSETS 256

typedef struct {
    PyObject *name;    /* the asset str (ASCII) */
    long long count;
    __int128 posted, pending;
    int dirty;
} Asset;

typedef struct {
    long long id;
    PyObject *state;    /* the account's Python list [asset, flags, dpend, dpost, cpend, cpost] */
    PyObject *held[4];  /* the balance objects last read from or written to state[2..5] */
    long long bal[4];   /* dpend, dpost, cpend, cpost */
    long flags;
    int asset;          /* index into Scanner.assets */
    unsigned epoch;
    int dirty;
} Acct;

/* ---- IdSet: a set of transfer ids (str), keyed by their UTF-8 bytes, hashed with Python's keyed hash */

typedef struct {
    Py_hash_t hash;
    Py_ssize_t len;
    char *key;
} IdSlot;

typedef struct {
    PyObject_HEAD
    IdSlot *slots;
    Py_ssize_t mask;     /* capacity - 1 (capacity a power of two) */
    Py_ssize_t used;
    char *arena;         /* the current block of key bytes */
    Py_ssize_t arena_left;
    char **blocks;       /* every block, to free */
    Py_ssize_t nblocks;
} IdSet;

#define ARENA_BLOCK (1 << 20)

static int idset_grow(IdSet *set) {
    Py_ssize_t capacity = set->slots ? (set->mask + 1) * 2 : 1024;
    IdSlot *slots = PyMem_Calloc((size_t)capacity, sizeof(IdSlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t mask = capacity - 1;
    if (set->slots) {
        for (Py_ssize_t i = 0; i <= set->mask; i++) {
            IdSlot *old = &set->slots[i];
            if (old->key == NULL) continue;
            Py_ssize_t j = (Py_ssize_t)((size_t)old->hash & (size_t)mask);
            while (slots[j].key != NULL) j = (j + 1) & mask;
            slots[j] = *old;
        }
        PyMem_Free(set->slots);
    }
    set->slots = slots;
    set->mask = mask;
    return 0;
}

static char *idset_store(IdSet *set, const char *key, Py_ssize_t len) {
    if (len > set->arena_left) {
        Py_ssize_t size = len > ARENA_BLOCK ? len : ARENA_BLOCK;
        char **blocks = PyMem_Realloc(set->blocks, sizeof(char *) * (size_t)(set->nblocks + 1));
        if (blocks == NULL) return NULL;
        set->blocks = blocks;
        char *block = PyMem_Malloc((size_t)size);
        if (block == NULL) return NULL;
        set->blocks[set->nblocks++] = block;
        set->arena = block;
        set->arena_left = size;
    }
    char *stored = set->arena;
    memcpy(stored, key, (size_t)len);
    set->arena += len;
    set->arena_left -= len;
    return stored;
}

/* 1 if the key was added, 0 if it was there, -1 on error (with ``add`` 0 only looks: 1 found, 0 not). */
static int idset_op_hashed(IdSet *set, const char *key, Py_ssize_t len, Py_hash_t hash, int add) {
    if (set->slots == NULL && idset_grow(set) < 0) return -1;
    Py_ssize_t j = (Py_ssize_t)((size_t)hash & (size_t)set->mask);
    for (;;) {
        IdSlot *slot = &set->slots[j];
        if (slot->key == NULL) break;
        if (slot->hash == hash && slot->len == len && memcmp(slot->key, key, (size_t)len) == 0) {
            return add ? 0 : 1;
        }
        j = (j + 1) & set->mask;
    }
    if (!add) return 0;
    char *stored = idset_store(set, key, len);
    if (stored == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    IdSlot *slot = &set->slots[j];
    slot->hash = hash;
    slot->len = len;
    slot->key = stored;
    set->used++;
    if (set->used * 2 > set->mask + 1 && idset_grow(set) < 0) return -1;
    return 1;
}

static int idset_op(IdSet *set, const char *key, Py_ssize_t len, int add) {
    return idset_op_hashed(set, key, len, _Py_HashBytes(key, len), add);
}

/* Start loading the slot where a key's probe begins (the table is far bigger than the caches). */
static void idset_prefetch(IdSet *set, Py_hash_t hash) {
    if (set->slots != NULL) __builtin_prefetch(&set->slots[(size_t)hash & (size_t)set->mask]);
}

/* The str's UTF-8 bytes (surrogates passed through, so distinct strs have distinct keys). */
static int idset_str_op(IdSet *set, PyObject *value, int add) {
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "transfer ids are str");
        return -1;
    }
    if (PyUnicode_IS_ASCII(value)) {
        return idset_op(set, PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value), add);
    }
    PyObject *bytes = PyUnicode_AsEncodedString(value, "utf-8", "surrogatepass");
    if (bytes == NULL) return -1;
    int result = idset_op(set, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes), add);
    Py_DECREF(bytes);
    return result;
}

static int IdSet_contains(IdSet *set, PyObject *value) { return idset_str_op(set, value, 0); }

static PyObject *IdSet_add(IdSet *set, PyObject *value) {
    if (idset_str_op(set, value, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static Py_ssize_t IdSet_len(IdSet *set) { return set->used; }

static void IdSet_dealloc(IdSet *set) {
    for (Py_ssize_t i = 0; i < set->nblocks; i++) PyMem_Free(set->blocks[i]);
    PyMem_Free(set->blocks);
    PyMem_Free(set->slots);
    Py_TYPE(set)->tp_free((PyObject *)set);
}

static PySequenceMethods IdSet_as_sequence = {
    .sq_length = (lenfunc)IdSet_len,
    .sq_contains = (objobjproc)IdSet_contains,
};

static PyMethodDef IdSet_methods[] = {
    {"add", (PyCFunction)IdSet_add, METH_O, "add(id) -> None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IdSetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "custody.audit._fastscan.IdSet",
    .tp_basicsize = sizeof(IdSet),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)IdSet_dealloc,
    .tp_as_sequence = &IdSet_as_sequence,
    .tp_methods = IdSet_methods,
    .tp_doc = "The set of transfer ids seen (add, in, len), shared by the fast path and the pure verifier.",
};

typedef struct {
    PyObject_HEAD
    unsigned char prev[32];
    unsigned char stack[MAX_DEPTH][32];
    int depth;
    long long count;
    long long max_seq;
    PyObject *accounts;  /* dict[int, list]: the state of record, written back by every scan() */
    IdSet *ids;          /* the ids seen, shared with the pure verifier */
    PyObject *totals;    /* dict[str, list[int]] */
    PyObject *pendings;  /* dict[str, tuple[int, int, int]] */
    Acct **accts;        /* open addressing by account id */
    Py_ssize_t acct_mask, nacct;
    Acct **dirty;        /* accounts changed since the last write-back */
    Py_ssize_t ndirty, dirty_cap;
    Asset assets[MAX_ASSETS];
    int nassets;
    unsigned epoch;      /* bumped by every scan(): the pure verifier may have run in between */
    long long *stops;    /* sorted line counts where the pure verifier must take over */
    Py_ssize_t nstops;
    Py_ssize_t stop_index;
} Scanner;

/* ---- The account table ------------------------------------------------------------------------ */

static void acct_release(Acct *a) {
    Py_CLEAR(a->state);
    for (int k = 0; k < 4; k++) Py_CLEAR(a->held[k]);
}

/* Read state[2..5] into the C balances; 1 ok, 0 they do not fit int64 (leave it to pure), -1 error. */
static int acct_read(Acct *a) {
    for (int k = 0; k < 4; k++) {
        PyObject *value = PyList_GET_ITEM(a->state, k + 2);
        if (!PyLong_CheckExact(value)) return 0;
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) return 0;
        if (v == -1 && PyErr_Occurred()) return -1;
        a->bal[k] = v;
        Py_INCREF(value);
        Py_XSETREF(a->held[k], value);
    }
    return 1;
}

static int asset_index(Scanner *s, PyObject *name);

static Acct *acct_slot(Scanner *s, long long id, Py_ssize_t *where) {
    Py_hash_t hash = _Py_HashBytes(&id, sizeof id);
    Py_ssize_t j = (Py_ssize_t)((size_t)hash & (size_t)s->acct_mask);
    for (;;) {
        Acct *a = s->accts[j];
        if (a == NULL || a->id == id) {
            *where = j;
            return a;
        }
        j = (j + 1) & s->acct_mask;
    }
}

static int acct_grow(Scanner *s) {
    Py_ssize_t capacity = s->accts ? (s->acct_mask + 1) * 2 : 1024;
    Acct **table = PyMem_Calloc((size_t)capacity, sizeof(Acct *));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Acct **old = s->accts;
    Py_ssize_t old_mask = s->acct_mask;
    s->accts = table;
    s->acct_mask = capacity - 1;
    if (old) {
        for (Py_ssize_t i = 0; i <= old_mask; i++) {
            if (old[i] == NULL) continue;
            Py_ssize_t j;
            acct_slot(s, old[i]->id, &j);
            table[j] = old[i];
        }
        PyMem_Free(old);
    }
    return 0;
}

/* The account, current as of this scan; NULL with no error: leave the line to pure. */
static Acct *account(Scanner *s, long long id) {
    Py_ssize_t j;
    Acct *a = acct_slot(s, id, &j);
    if (a != NULL) {
        if (a->epoch == s->epoch) return a;
        /* The pure verifier may have run since: re-read whatever it replaced. */
        for (int k = 0; k < 4; k++) {
            if (PyList_GET_ITEM(a->state, k + 2) != a->held[k]) {
                int fits = acct_read(a);
                if (fits <= 0) return NULL;
                break;
            }
        }
        a->epoch = s->epoch;
        return a;
    }
    PyObject *key = PyLong_FromLongLong(id);
    if (key == NULL) return NULL;
    PyObject *state = PyDict_GetItemWithError(s->accounts, key);  /* borrowed */
    Py_DECREF(key);
    if (state == NULL) return NULL;
    if (!PyList_CheckExact(state) || PyList_GET_SIZE(state) != 6) {
        PyErr_SetString(PyExc_TypeError, "account states must be lists of six items");
        return NULL;
    }
    PyObject *name = PyList_GET_ITEM(state, 0), *flags = PyList_GET_ITEM(state, 1);
    if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name) || !PyLong_CheckExact(flags)) return NULL;
    long f = PyLong_AsLong(flags);
    if (f == -1 && PyErr_Occurred()) return NULL;
    int asset = asset_index(s, name);
    if (asset < 0) return NULL;
    a = PyMem_Calloc(1, sizeof(Acct));
    if (a == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    a->id = id;
    Py_INCREF(state);
    a->state = state;
    int fits = acct_read(a);
    if (fits <= 0) {
        acct_release(a);
        PyMem_Free(a);
        return NULL;
    }
    a->flags = f;
    a->asset = asset;
    a->epoch = s->epoch;
    s->accts[j] = a;
    s->nacct++;
    if (s->nacct * 2 > s->acct_mask + 1 && acct_grow(s) < 0) return NULL;
    return a;
}

/* The index of the asset in Scanner.assets (added if new); -1 (no error) if there are too many. */
static int asset_index(Scanner *s, PyObject *name) {
    for (int i = 0; i < s->nassets; i++) {
        PyObject *known = s->assets[i].name;
        if (known == name || PyUnicode_Compare(known, name) == 0) return i;
    }
    if (s->nassets >= MAX_ASSETS) return -1;
    Asset *asset = &s->assets[s->nassets];
    memset(asset, 0, sizeof *asset);
    Py_INCREF(name);
    asset->name = name;
    return s->nassets++;
}

/* Add a C delta to a Python int item of a list (new object in place of the old). */
static int list_add(PyObject *list, Py_ssize_t i, __int128 delta) {
    if (delta == 0) return 0;
    PyObject *d;
    if (delta >= LLONG_MIN && delta <= LLONG_MAX) {
        d = PyLong_FromLongLong((long long)delta);
    } else {
        unsigned __int128 magnitude = delta < 0 ? -(unsigned __int128)delta : (unsigned __int128)delta;
        unsigned char bytes[16];
        for (int b = 0; b < 16; b++) bytes[b] = (unsigned char)(magnitude >> (8 * b));
        PyObject *positive = _PyLong_FromByteArray(bytes, 16, 1, 0);
        d = positive && delta < 0 ? PyNumber_Negative(positive) : positive;
        if (delta < 0) Py_XDECREF(positive);
    }
    if (d == NULL) return -1;
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(list, i), d);
    Py_DECREF(d);
    if (sum == NULL) return -1;
    PyList_SetItem(list, i, sum);
    return 0;
}

/* Write every changed balance and total back into the Python state (before the pure verifier runs). */
static int write_back(Scanner *s) {
    for (Py_ssize_t i = 0; i < s->ndirty; i++) {
        Acct *a = s->dirty[i];
        a->dirty = 0;
        for (int k = 0; k < 4; k++) {
            PyObject *value = PyLong_FromLongLong(a->bal[k]);
            if (value == NULL) return -1;
            Py_INCREF(value);
            Py_XSETREF(a->held[k], value);
            PyList_SetItem(a->state, k + 2, value);
        }
    }
    s->ndirty = 0;
    for (int i = 0; i < s->nassets; i++) {
        Asset *asset = &s->assets[i];
        if (!asset->dirty) continue;
        PyObject *row = PyDict_GetItemWithError(s->totals, asset->name);
        if (row == NULL) {
            if (PyErr_Occurred()) return -1;
            row = Py_BuildValue("[iii]", 0, 0, 0);
            if (row == NULL) return -1;
            int failed = PyDict_SetItem(s->totals, asset->name, row);
            Py_DECREF(row);
            if (failed) return -1;
        }
        if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != 3) {
            PyErr_SetString(PyExc_TypeError, "totals rows must be lists of three ints");
            return -1;
        }
        if (list_add(row, 0, asset->count) < 0 || list_add(row, 1, asset->posted) < 0
                || list_add(row, 2, asset->pending) < 0) {
            return -1;
        }
        asset->count = 0;
        asset->posted = asset->pending = 0;
        asset->dirty = 0;
    }
    return 0;
}

static int mark_dirty(Scanner *s, Acct *a) {
    if (a->dirty) return 0;
    if (s->ndirty == s->dirty_cap) {
        Py_ssize_t cap = s->dirty_cap ? s->dirty_cap * 2 : 1024;
        Acct **grown = PyMem_Realloc(s->dirty, sizeof(Acct *) * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->dirty = grown;
        s->dirty_cap = cap;
    }
    s->dirty[s->ndirty++] = a;
    a->dirty = 1;
    return 0;
}

/*
 * Does an entry break a constraint? Like the pure verifier, only the side an entry can worsen is
 * checked: the debit account if debits-limited (dpend + dpost > cpost), the credit account if
 * credits-limited (cpend + cpost > dpost).
 */
static int breaks(long flags, long bit, long long pend, long long post, long long other_post) {
    return (flags & bit) && (__int128)pend + post > other_post;
}

/*
 * Replay one parsed entry if every check passes; 1 applied, 0 leave it to the
 * pure verifier (nothing changed), -1 error.
 */
static int apply(Scanner *s, const Fields *f, Py_hash_t id_hash) {
    int kind = kind_of(f->kind, f->kind_n);
    if (kind == K_OTHER) return 0;
    /* Amounts of up to 18 digits (< 2^63); longer ones are left to the pure verifier. */
    if (f->amount_n < 1 || f->amount_n > MAX_INT_DIGITS || f->amount[0] == '0') return 0;
    long long amount = 0;
    for (Py_ssize_t i = 0; i < f->amount_n; i++) {
        if (f->amount[i] < '0' || f->amount[i] > '9') return 0;
        amount = amount * 10 + (f->amount[i] - '0');
    }
    if (!valid_actor(f->actor, f->actor_n)) return 0;
    if (f->id_n >= 5 && memcmp(f->id, "open:", 5) == 0) return 0;
    if (f->debit == f->credit) return 0;
    Acct *debit = account(s, f->debit);
    if (debit == NULL) return PyErr_Occurred() ? -1 : 0;
    Acct *credit = account(s, f->credit);
    if (credit == NULL) return PyErr_Occurred() ? -1 : 0;
    if (debit->asset != credit->asset) return 0;
    PyObject *name = s->assets[debit->asset].name;
    if (PyUnicode_GET_LENGTH(name) != f->asset_n || memcmp(PyUnicode_DATA(name), f->asset, (size_t)f->asset_n) != 0) {
        return 0;
    }
    long long dp = debit->bal[0], dpo = debit->bal[1], cp = credit->bal[2], cpo = credit->bal[3];
    long long posted = 0, pending_delta = 0;
    PyObject *pending_key = NULL;
    int result = -1;
    if (kind == K_SINGLE) {
        if (__builtin_add_overflow(dpo, amount, &dpo) || __builtin_add_overflow(cpo, amount, &cpo)) return 0;
        posted = amount;
    } else if (kind == K_PENDING) {
        if (__builtin_add_overflow(dp, amount, &dp) || __builtin_add_overflow(cp, amount, &cp)) return 0;
        pending_delta = amount;
    } else {
        /* post / void / expire of an outstanding pending between the same two accounts */
        if (f->pending_null) return 0;
        pending_key = PyUnicode_FromStringAndSize(f->pending_id, f->pending_id_n);
        if (pending_key == NULL) return -1;
        PyObject *held = PyDict_GetItemWithError(s->pendings, pending_key);  /* borrowed */
        if (held == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        result = 0;
        if (!PyTuple_CheckExact(held) || PyTuple_GET_SIZE(held) != 3) goto done;
        PyObject *h_debit = PyTuple_GET_ITEM(held, 0), *h_credit = PyTuple_GET_ITEM(held, 1);
        PyObject *h_amount = PyTuple_GET_ITEM(held, 2);
        if (!PyLong_CheckExact(h_debit) || !PyLong_CheckExact(h_credit) || !PyLong_CheckExact(h_amount)) goto done;
        int o1 = 0, o2 = 0, o3 = 0;
        long long hd = PyLong_AsLongLongAndOverflow(h_debit, &o1);
        long long hc = PyLong_AsLongLongAndOverflow(h_credit, &o2);
        long long ha = PyLong_AsLongLongAndOverflow(h_amount, &o3);
        if (PyErr_Occurred()) {
            result = -1;
            goto done;
        }
        if (o1 || o2 || o3 || hd != f->debit || hc != f->credit) goto done;
        if (kind == K_POST ? amount > ha : amount != ha) goto done;
        posted = kind == K_POST ? amount : 0;
        pending_delta = -ha;
        if (__builtin_sub_overflow(dp, ha, &dp) || __builtin_sub_overflow(cp, ha, &cp)
                || __builtin_add_overflow(dpo, posted, &dpo) || __builtin_add_overflow(cpo, posted, &cpo)) {
            goto done;
        }
        result = -1;
    }
    /* Check both constraints on the values after the entry, before changing anything. */
    if (breaks(debit->flags, 1, dp, dpo, debit->bal[3]) || breaks(credit->flags, 2, cp, cpo, credit->bal[1])) {
        result = 0;
        goto done;
    }
    /* The id check last: adding a new id changes the set, a reused one does not. */
    int added = idset_op_hashed(s->ids, f->id, f->id_n, id_hash, 1);
    if (added <= 0) {
        result = added;
        goto done;
    }
    if (kind == K_PENDING) {
        PyObject *record = Py_BuildValue("(LLL)", f->debit, f->credit, amount);
        PyObject *id = record ? PyUnicode_FromStringAndSize(f->id, f->id_n) : NULL;
        int failed = id == NULL || PyDict_SetItem(s->pendings, id, record) < 0;
        Py_XDECREF(record);
        Py_XDECREF(id);
        if (failed) goto done;
    } else if (kind >= K_POST) {
        if (PyDict_DelItem(s->pendings, pending_key) < 0) goto done;
    }
    if (mark_dirty(s, debit) < 0 || mark_dirty(s, credit) < 0) goto done;
    Asset *asset = &s->assets[debit->asset];
    asset->count++;
    asset->posted += posted;
    asset->pending += pending_delta;
    asset->dirty = 1;
    debit->bal[0] = dp;
    debit->bal[1] = dpo;
    credit->bal[2] = cp;
    credit->bal[3] = cpo;
    result = 1;
done:
    Py_XDECREF(pending_key);
    return result;
}

static void node_hash(const unsigned char *left, const unsigned char *right, unsigned char *out) {
    /* The low-level calls: OpenSSL 3's one-shot SHA256() fetches the digest (locks) per call. */
    unsigned char prefix = 1;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, &prefix, 1);
    SHA256_Update(&ctx, left, 32);
    SHA256_Update(&ctx, right, 32);
    SHA256_Final(out, &ctx);
}

static PyObject *Scanner_scan(Scanner *s, PyObject *args) {
    PyObject *lines;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &lines, &start)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(lines);
    Py_ssize_t i = start < 0 ? 0 : start;
    s->epoch++;
    for (; i < n; i++) {
        long long count = s->count + 1;
        /* A checkpoint or snapshot at this line: the pure verifier takes the line and the stop. */
        while (s->stop_index < s->nstops && s->stops[s->stop_index] < count) s->stop_index++;
        if (s->stop_index < s->nstops && s->stops[s->stop_index] == count) break;
        if (s->depth >= MAX_DEPTH - 1) break;
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyBytes_CheckExact(line)) break;
        const char *text = PyBytes_AS_STRING(line);
        Py_ssize_t size = PyBytes_GET_SIZE(line);
        if (size < 66 || text[64] != ' ') break;
        const char *raw = text + 65;
        Py_ssize_t raw_n = size - 65;
        Fields f;
        if (!parse(raw, raw_n, &f) || f.seq != s->max_seq + 1) break;
        /* The id's slot is almost always a cache miss: start the load now, hash the chain meanwhile. */
        Py_hash_t id_hash = _Py_HashBytes(f.id, f.id_n);
        idset_prefetch(s->ids, id_hash);
        unsigned char digest[32];
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, DOMAIN, DOMAIN_LEN);
        SHA256_Update(&ctx, s->prev, 32);
        SHA256_Update(&ctx, raw, (size_t)raw_n);
        SHA256_Final(digest, &ctx);
        if (!hex_equal(text, digest)) break;
        int applied = apply(s, &f, id_hash);
        if (applied < 0) {
            write_back(s);
            return NULL;
        }
        if (applied == 0) break;
        /* Committed: the chain, the Merkle frontier, the counters. */
        memcpy(s->prev, digest, 32);
        unsigned char leaf_prefix = 0;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, &leaf_prefix, 1);
        SHA256_Update(&ctx, raw, (size_t)raw_n);
        SHA256_Final(s->stack[s->depth], &ctx);
        s->depth++;
        for (long long size_left = count; !(size_left & 1); size_left >>= 1) {
            node_hash(s->stack[s->depth - 2], s->stack[s->depth - 1], s->stack[s->depth - 2]);
            s->depth--;
        }
        s->count = count;
        s->max_seq = f.seq;
    }
    /* Handing a line to the pure verifier: it must see every change. At the end of a batch the next
       scan() continues where this one stopped, so the write-back waits (flush() ends the file). */
    if (i < n && write_back(s) < 0) return NULL;
    return PyLong_FromSsize_t(i);
}

static PyObject *Scanner_flush(Scanner *s, PyObject *Py_UNUSED(ignored)) {
    if (write_back(s) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Scanner_get_state(Scanner *s, PyObject *Py_UNUSED(ignored)) {
    PyObject *stack = PyList_New(s->depth);
    if (stack == NULL) return NULL;
    for (int i = 0; i < s->depth; i++) {
        PyObject *item = PyBytes_FromStringAndSize((const char *)s->stack[i], 32);
        if (item == NULL) {
            Py_DECREF(stack);
            return NULL;
        }
        PyList_SET_ITEM(stack, i, item);
    }
    return Py_BuildValue("(y#NLL)", (const char *)s->prev, (Py_ssize_t)32, stack, s->count, s->max_seq);
}

static PyObject *Scanner_set_state(Scanner *s, PyObject *args) {
    const char *prev;
    Py_ssize_t prev_n;
    PyObject *stack;
    long long count, max_seq;
    if (!PyArg_ParseTuple(args, "y#O!LL", &prev, &prev_n, &PyList_Type, &stack, &count, &max_seq)) {
        return NULL;
    }
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (prev_n != 32 || depth >= MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "bad scanner state");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < depth; i++) {
        PyObject *item = PyList_GET_ITEM(stack, i);
        if (!PyBytes_CheckExact(item) || PyBytes_GET_SIZE(item) != 32) {
            PyErr_SetString(PyExc_ValueError, "Merkle stack items must be 32-byte hashes");
            return NULL;
        }
    }
    memcpy(s->prev, prev, 32);
    for (Py_ssize_t i = 0; i < depth; i++) memcpy(s->stack[i], PyBytes_AS_STRING(PyList_GET_ITEM(stack, i)), 32);
    s->depth = (int)depth;
    s->count = count;
    s->max_seq = max_seq;
    Py_RETURN_NONE;
}

static void clear_cache(Scanner *s) {
    if (s->accts) {
        for (Py_ssize_t i = 0; i <= s->acct_mask; i++) {
            if (s->accts[i] == NULL) continue;
            acct_release(s->accts[i]);
            PyMem_Free(s->accts[i]);
        }
        PyMem_Free(s->accts);
    }
    s->accts = NULL;
    s->acct_mask = s->nacct = 0;
    PyMem_Free(s->dirty);
    s->dirty = NULL;
    s->ndirty = s->dirty_cap = 0;
    for (int i = 0; i < s->nassets; i++) Py_CLEAR(s->assets[i].name);
    s->nassets = 0;
}

static int Scanner_init(Scanner *s, PyObject *args, PyObject *kwds) {
    static char *names[] = {"accounts", "ids", "totals", "pendings", "stops", NULL};
    PyObject *accounts, *ids, *totals, *pendings, *stops;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O", names, &PyDict_Type, &accounts, &IdSetType,
                                     &ids, &PyDict_Type, &totals, &PyDict_Type, &pendings, &stops)) {
        return -1;
    }
    PyObject *ordered = PySequence_List(stops);
    if (ordered == NULL || PyList_Sort(ordered) < 0) {
        Py_XDECREF(ordered);
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(ordered);
    long long *array = PyMem_Malloc(sizeof(long long) * (size_t)(n ? n : 1));
    if (array == NULL) {
        Py_DECREF(ordered);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        array[i] = PyLong_AsLongLong(PyList_GET_ITEM(ordered, i));
        if (array[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(array);
            Py_DECREF(ordered);
            return -1;
        }
    }
    Py_DECREF(ordered);
    PyMem_Free(s->stops);
    s->stops = array;
    s->nstops = n;
    s->stop_index = 0;
    Py_INCREF(accounts);
    Py_XSETREF(s->accounts, accounts);
    Py_INCREF(ids);
    Py_XSETREF(s->ids, (IdSet *)ids);
    Py_INCREF(totals);
    Py_XSETREF(s->totals, totals);
    Py_INCREF(pendings);
    Py_XSETREF(s->pendings, pendings);
    clear_cache(s);
    if (acct_grow(s) < 0) return -1;
    memset(s->prev, 0, 32);
    s->depth = 0;
    s->count = 0;
    s->max_seq = 0;
    return 0;
}

static void Scanner_dealloc(Scanner *s) {
    clear_cache(s);
    Py_XDECREF(s->accounts);
    Py_XDECREF(s->ids);
    Py_XDECREF(s->totals);
    Py_XDECREF(s->pendings);
    PyMem_Free(s->stops);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)Scanner_scan, METH_VARARGS,
     "scan(lines, start) -> index of the first line left to the pure verifier (len(lines) if none)"},
    {"flush", (PyCFunction)Scanner_flush, METH_NOARGS,
     "flush() -> None: write the balances and totals changed since the last hand-over back"},
    {"get_state", (PyCFunction)Scanner_get_state, METH_NOARGS,
     "get_state() -> (prev hash, Merkle stack, line count, max seq)"},
    {"set_state", (PyCFunction)Scanner_set_state, METH_VARARGS,
     "set_state(prev hash, Merkle stack, line count, max seq)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "custody.audit._fastscan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
    .tp_doc = "The compiled fast path over entries.jsonl (see custody/audit/fastscan.py).",
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastscan", "Compiled fast path of the audit verifier.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastscan(void) {
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    if (PyType_Ready(&IdSetType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&IdSetType);
    if (PyModule_AddObject(m, "IdSet", (PyObject *)&IdSetType) < 0) {
        Py_DECREF(&IdSetType);
        Py_DECREF(m);
        return NULL;
    }
#ifdef FASTSCAN_SOURCE_SHA256
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", FASTSCAN_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
