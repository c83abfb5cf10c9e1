/*
 * The audit verifier's compiled fast path over entries.jsonl (optional; see fastscan.py).
 *
 * Scanner.scan(lines, start) walks the lines of one batch. For each line it
 * recomputes the chain hash (SHA-256 over the domain, the previous hash and the
 * entry bytes), the RFC 6962 leaf hash and the Merkle frontier, parses the
 * entry against the one canonical byte template of a transfer entry, and
 * replays it into the verifier's own Python state (accounts, ids, totals,
 * pendings) exactly as custody/audit/verify.py does.
 *
 * It only ever accepts a line when every check the pure verifier makes on it
 * passes: a line with anything else (a stored hash that does not match, an
 * escape in a string, an integer over 18 digits, an open entry, a sequence
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
#define MAX_AMOUNT_DIGITS 77 /* 10^77 < 2^256: shorter amounts are always below the limit */

static const char DOMAIN[] = "strongroom.ledger.entry.v1";  /* + the NUL: 27 bytes */
#define DOMAIN_LEN 27

typedef struct {
    PyObject_HEAD
    unsigned char prev[32];
    unsigned char stack[MAX_DEPTH][32];
    int depth;
    long long count;
    long long max_seq;
    PyObject *accounts;  /* dict[int, list] */
    PyObject *ids;       /* set[str] */
    PyObject *totals;    /* dict[str, list[int]] */
    PyObject *pendings;  /* dict[str, tuple[int, int, int]] */
    /* Account states found before, by id (direct-mapped, strong references): an account's
       state list is created once, by its open entry, and never replaced, so a hit is current. */
    long long cached_id[1024];
    PyObject *cached_state[1024];
    PyObject *last_asset;  /* the asset str of the previous entry, reused while it repeats */
    long long *stops;    /* sorted line counts where the pure verifier must take over */
    Py_ssize_t nstops;
    Py_ssize_t stop_index;
} Scanner;

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

/* Is the account's asset (item 0 of its state list, a str) exactly these bytes? */
static int asset_is(PyObject *state, const char *asset, Py_ssize_t n) {
    PyObject *value = PyList_GET_ITEM(state, 0);
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value)) return 0;
    return PyUnicode_GET_LENGTH(value) == n && memcmp(PyUnicode_DATA(value), asset, (size_t)n) == 0;
}

/* a + b (new reference), or NULL. */
static PyObject *add(PyObject *a, PyObject *b) { return PyNumber_Add(a, b); }
static PyObject *sub(PyObject *a, PyObject *b) { return PyNumber_Subtract(a, b); }

/* 1 if x > y, 0 if not, -1 on error. */
static int greater(PyObject *x, PyObject *y) { return PyObject_RichCompareBool(x, y, Py_GT); }

static PyObject *ZERO;

/*
 * Does an entry break a constraint? Like the pure verifier, only the side an entry can worsen is
 * checked: the debit account if debits-limited (dpend + dpost > cpost), the credit account if
 * credits-limited (cpend + cpost > dpost). Returns 1 broken, 0 fine, -1 error.
 */
static int breaks(PyObject *flags, long bit, PyObject *pend, PyObject *post, PyObject *other_post) {
    long f = PyLong_AsLong(flags);
    if (f == -1 && PyErr_Occurred()) return -1;
    if (!(f & bit)) return 0;
    PyObject *sum = add(pend, post);
    if (sum == NULL) return -1;
    int broken = greater(sum, other_post);
    Py_DECREF(sum);
    return broken;
}

static void set_item(PyObject *list, Py_ssize_t i, PyObject *value) {
    /* Steals ``value``; the list keeps its length. */
    PyList_SetItem(list, i, value);
}

/* Bump totals[asset] by (1, posted, pending_delta) like the pure verifier. */
static int bump_totals(Scanner *s, PyObject *asset, PyObject *posted, PyObject *pending_delta) {
    PyObject *row = PyDict_GetItemWithError(s->totals, asset);
    if (row == NULL) {
        if (PyErr_Occurred()) return -1;
        row = Py_BuildValue("[iii]", 0, 0, 0);
        if (row == NULL) return -1;
        int failed = PyDict_SetItem(s->totals, asset, row);
        Py_DECREF(row);
        if (failed) return -1;
    }
    if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != 3) {
        PyErr_SetString(PyExc_TypeError, "totals rows must be lists of three ints");
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *v0 = one ? add(PyList_GET_ITEM(row, 0), one) : NULL;
    Py_XDECREF(one);
    PyObject *v1 = v0 && posted ? add(PyList_GET_ITEM(row, 1), posted) : NULL;
    PyObject *v2 = v1 && pending_delta ? add(PyList_GET_ITEM(row, 2), pending_delta) : NULL;
    if (v2 == NULL) {
        Py_XDECREF(v0);
        Py_XDECREF(v1);
        return -1;
    }
    set_item(row, 0, v0);
    set_item(row, 1, v1);
    set_item(row, 2, v2);
    return 0;
}

static PyObject *amount_of(const Fields *f) {
    if (f->amount_n <= MAX_INT_DIGITS) {
        long long value = 0;
        for (Py_ssize_t i = 0; i < f->amount_n; i++) value = value * 10 + (f->amount[i] - '0');
        return PyLong_FromLongLong(value);
    }
    char buffer[MAX_AMOUNT_DIGITS + 1];
    memcpy(buffer, f->amount, (size_t)f->amount_n);
    buffer[f->amount_n] = 0;
    return PyLong_FromString(buffer, NULL, 10);
}

static PyObject *account(Scanner *s, long long id) {
    size_t slot = (size_t)id & 1023;
    if (s->cached_state[slot] != NULL && s->cached_id[slot] == id) return s->cached_state[slot];
    PyObject *key = PyLong_FromLongLong(id);
    if (key == NULL) return NULL;
    PyObject *state = PyDict_GetItemWithError(s->accounts, key);  /* borrowed */
    Py_DECREF(key);
    if (state == NULL) return NULL;
    if (!PyList_CheckExact(state) || PyList_GET_SIZE(state) != 6) {
        PyErr_SetString(PyExc_TypeError, "account states must be lists of six items");
        return NULL;
    }
    Py_INCREF(state);
    Py_XSETREF(s->cached_state[slot], state);
    s->cached_id[slot] = id;
    return state;
}

/* The entry's asset as a str (new reference), reusing the previous entry's while it repeats. */
static PyObject *asset_str(Scanner *s, const char *asset, Py_ssize_t n) {
    PyObject *last = s->last_asset;
    if (last != NULL && PyUnicode_GET_LENGTH(last) == n && memcmp(PyUnicode_DATA(last), asset, (size_t)n) == 0) {
        Py_INCREF(last);
        return last;
    }
    PyObject *fresh = PyUnicode_FromStringAndSize(asset, n);
    if (fresh == NULL) return NULL;
    Py_INCREF(fresh);
    Py_XSETREF(s->last_asset, fresh);
    return fresh;
}

/*
 * Replay one parsed entry if every check passes; 1 applied, 0 leave it to the
 * pure verifier (nothing changed), -1 error.
 */
static int apply(Scanner *s, const Fields *f) {
    int kind = kind_of(f->kind, f->kind_n);
    if (kind == K_OTHER) return 0;
    if (f->amount_n < 1 || f->amount_n > MAX_AMOUNT_DIGITS || f->amount[0] == '0') return 0;
    for (Py_ssize_t i = 0; i < f->amount_n; i++) {
        if (f->amount[i] < '0' || f->amount[i] > '9') return 0;
    }
    if (!valid_actor(f->actor, f->actor_n)) return 0;
    if (f->id_n >= 5 && memcmp(f->id, "open:", 5) == 0) return 0;
    if (f->debit == f->credit) return 0;
    PyObject *debit = account(s, f->debit);
    if (debit == NULL) return PyErr_Occurred() ? -1 : 0;
    PyObject *credit = account(s, f->credit);
    if (credit == NULL) return PyErr_Occurred() ? -1 : 0;
    if (debit == credit || !asset_is(debit, f->asset, f->asset_n) || !asset_is(credit, f->asset, f->asset_n)) {
        return 0;
    }
    PyObject *held = NULL, *pending_key = NULL;
    if (kind >= K_POST) {
        if (f->pending_null) return 0;
        pending_key = PyUnicode_FromStringAndSize(f->pending_id, f->pending_id_n);
        if (pending_key == NULL) return -1;
        held = PyDict_GetItemWithError(s->pendings, pending_key);  /* borrowed */
        if (held == NULL) {
            Py_DECREF(pending_key);
            return PyErr_Occurred() ? -1 : 0;
        }
        if (!PyTuple_CheckExact(held) || PyTuple_GET_SIZE(held) != 3) {
            Py_DECREF(pending_key);
            return 0;
        }
    }
    int result = -1;
    PyObject *id = NULL, *amount = NULL, *asset = NULL, *posted = NULL, *pending_delta = NULL;
    PyObject *d_pend = NULL, *d_post = NULL, *c_pend = NULL, *c_post = NULL, *record = NULL;
    id = PyUnicode_FromStringAndSize(f->id, f->id_n);
    if (id == NULL) goto done;
    amount = amount_of(f);
    if (amount == NULL) goto done;
    PyObject *dp = PyList_GET_ITEM(debit, 2), *dpo = PyList_GET_ITEM(debit, 3);
    PyObject *cp = PyList_GET_ITEM(credit, 4), *cpo = PyList_GET_ITEM(credit, 5);
    if (kind == K_SINGLE) {
        Py_INCREF(dp);
        d_pend = dp;
        Py_INCREF(cp);
        c_pend = cp;
        d_post = add(dpo, amount);
        c_post = add(cpo, amount);
        Py_INCREF(amount);
        posted = amount;
        Py_INCREF(ZERO);
        pending_delta = ZERO;
    } else if (kind == K_PENDING) {
        d_pend = add(dp, amount);
        c_pend = add(cp, amount);
        Py_INCREF(dpo);
        d_post = dpo;
        Py_INCREF(cpo);
        c_post = cpo;
        Py_INCREF(ZERO);
        posted = ZERO;
        Py_INCREF(amount);
        pending_delta = amount;
    } else {
        /* post / void / expire of an outstanding pending between the same two accounts */
        PyObject *h_debit = PyTuple_GET_ITEM(held, 0), *h_credit = PyTuple_GET_ITEM(held, 1);
        PyObject *h_amount = PyTuple_GET_ITEM(held, 2);
        if (!PyLong_CheckExact(h_debit) || !PyLong_CheckExact(h_credit) || !PyLong_CheckExact(h_amount)
                || PyLong_AsLongLong(h_debit) != f->debit || PyLong_AsLongLong(h_credit) != f->credit) {
            if (PyErr_Occurred()) PyErr_Clear();
            result = 0;
            goto done;
        }
        int fits = kind == K_POST ? PyObject_RichCompareBool(amount, h_amount, Py_LE)
                                  : PyObject_RichCompareBool(amount, h_amount, Py_EQ);
        if (fits != 1) {
            result = fits < 0 ? -1 : 0;
            goto done;
        }
        if (kind == K_POST) {
            Py_INCREF(amount);
            posted = amount;
        } else {
            Py_INCREF(ZERO);
            posted = ZERO;
        }
        pending_delta = PyNumber_Negative(h_amount);
        if (pending_delta == NULL) goto done;
        d_pend = sub(dp, h_amount);
        c_pend = sub(cp, h_amount);
        d_post = d_pend ? add(dpo, posted) : NULL;
        c_post = c_pend ? add(cpo, posted) : NULL;
    }
    if (d_pend == NULL || d_post == NULL || c_pend == NULL || c_post == NULL) goto done;
    /* Check both constraints on the values after the entry, before changing anything. */
    int broken = breaks(PyList_GET_ITEM(debit, 1), 1, d_pend, d_post, PyList_GET_ITEM(debit, 5));
    if (broken == 0) broken = breaks(PyList_GET_ITEM(credit, 1), 2, c_pend, c_post, PyList_GET_ITEM(credit, 3));
    if (broken != 0) {
        result = broken < 0 ? -1 : 0;
        goto done;
    }
    asset = asset_str(s, f->asset, f->asset_n);
    if (asset == NULL) goto done;
    /* The id check last, as one set operation: adding a new id grows the set, a reused one does not. */
    Py_ssize_t known = PySet_GET_SIZE(s->ids);
    if (PySet_Add(s->ids, id) < 0) goto done;
    if (PySet_GET_SIZE(s->ids) == known) {
        result = 0;
        goto done;
    }
    if (kind == K_PENDING) {
        record = Py_BuildValue("(LLO)", f->debit, f->credit, amount);
        if (record == NULL || PyDict_SetItem(s->pendings, id, record) < 0) goto done;
    } else if (kind >= K_POST) {
        if (PyDict_DelItem(s->pendings, pending_key) < 0) goto done;
    }
    if (bump_totals(s, asset, posted, pending_delta) < 0) goto done;
    set_item(debit, 2, d_pend);
    set_item(debit, 3, d_post);
    set_item(credit, 4, c_pend);
    set_item(credit, 5, c_post);
    d_pend = d_post = c_pend = c_post = NULL;
    result = 1;
done:
    Py_XDECREF(pending_key);
    Py_XDECREF(id);
    Py_XDECREF(amount);
    Py_XDECREF(asset);
    Py_XDECREF(posted);
    Py_XDECREF(pending_delta);
    Py_XDECREF(d_pend);
    Py_XDECREF(d_post);
    Py_XDECREF(c_pend);
    Py_XDECREF(c_post);
    Py_XDECREF(record);
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
        unsigned char digest[32];
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, DOMAIN, DOMAIN_LEN);
        SHA256_Update(&ctx, s->prev, 32);
        SHA256_Update(&ctx, raw, (size_t)raw_n);
        SHA256_Final(digest, &ctx);
        if (!hex_equal(text, digest)) break;
        int applied = apply(s, &f);
        if (applied < 0) return NULL;
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
    return PyLong_FromSsize_t(i);
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
    for (int i = 0; i < 1024; i++) Py_CLEAR(s->cached_state[i]);
    Py_CLEAR(s->last_asset);
}

static int Scanner_init(Scanner *s, PyObject *args, PyObject *kwds) {
    static char *names[] = {"accounts", "ids", "totals", "pendings", "stops", NULL};
    PyObject *accounts, *ids, *totals, *pendings, *stops;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O", names, &PyDict_Type, &accounts, &PySet_Type,
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
    Py_XSETREF(s->ids, ids);
    Py_INCREF(totals);
    Py_XSETREF(s->totals, totals);
    Py_INCREF(pendings);
    Py_XSETREF(s->pendings, pendings);
    clear_cache(s);
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
    ZERO = PyLong_FromLong(0);
    if (ZERO == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
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
