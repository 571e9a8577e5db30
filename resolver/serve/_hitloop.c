/* The UDP cache-hit loop in native code (Linux): recvmmsg, hit lookup, sendmmsg.
 *
 * Why: a cache hit answered from uvloop's per-datagram callback costs ~0.6 x
 * Unbound's CPU per query; most of it is interpreter work around two system
 * calls per datagram (issue 19).  This module reads up to BATCH datagrams with one
 * recvmmsg(2), answers the plain fresh hits here, and sends them with one
 * sendmmsg(2).  Everything else is *declined*: handed back to Python as
 * (bytes, address) for today's datagram_received, unchanged.
 *
 * It answers what FastPath.answer_fast (fastpath.py) answers fresh: a fresh
 * entry, its aged copy current (now <= aged_until) or renewed by calling
 * FastPath.renew (once per second per entry: the TTL aging, LRU touch and
 * prefetch check stay Python's).  Stale answers under the failure recheck
 * timer, clients the ACL memo does not know yet, TC=1, anything odd: declined.
 * So the Python path stays the reference, and tests/unit/test_hitloop.py holds
 * this code to it byte for byte.
 *
 * Entries are read at their __slots__ offsets (Layout) and the listener's
 * reader callback is ready() itself: per wake-up no Python frame runs unless a
 * batch leaves work for Python (batch.py: BatchTransport._slow).
 *
 * The reply is never copied: it is sent as an iovec of the client's ID and
 * question (RFC 1035 section 7.3: the reply echoes them, 0x20 case preserved)
 * and the entry's header, aged body and the pre-built OPT record (RFC 6891).
 * The GIL is held for a whole batch; batch.py bounds batches per callback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define BATCH 64          /* datagrams per recvmmsg / sendmmsg */
#define MAX_BATCHES 16    /* recvmmsg calls per ready() at most */
#define BUDGET 0.0005     /* seconds of batches per ready() before the loop gets its turn */
#define DGRAM_MAX 65536   /* a UDP payload is at most 65,507 bytes: never truncated */
/* Receive buffers are DGRAM_MAX apart plus five cache lines, so the 64 headers the
 * kernel writes do not all fall into the same cache sets (a 64 KiB stride would). */
#define SLOT_STRIDE (DGRAM_MAX + 5 * 64)
#define PIECES 5          /* ID, header, question, body, OPT */
/* Replies up to this size are copied into one buffer and sent as one iovec: the
 * kernel's per-iovec work (copy, usercopy checks) costs more than the memcpy. */
#define INLINE_MAX 1232

typedef struct {
    struct iovec iov[PIECES];
    int niov;
    size_t len;
    PyObject *refs[3]; /* header, body, OPT: held until sent (larger replies only) */
    unsigned char inline_buf[INLINE_MAX];
} Reply;

/* Where an object's __slots__ live: the byte offsets of the member descriptors
 * of cache.store.Entry and stats.Cell, read once per type.  Reading a slot at
 * its offset skips the attribute machinery (type lookup, descriptor call, a
 * reference taken and dropped): most of this module's CPU time per hit before. */
typedef struct {
    PyTypeObject *type;    /* strong reference; NULL: not resolved yet */
    int ok;                /* 0: the type does not have the slots we read: decline */
    Py_ssize_t off[10];
} Layout;

enum { E_FRESH_UNTIL, E_AGED_UNTIL, E_HDR, E_HDR_OPT, E_AGED, E_TALLY, E_STORED_AT, E_BODY, E_TTL_OFFSETS,
       E_PREFETCH_AFTER, E_COUNT };
enum { T_FRESH };

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *prefixes[4];   /* key prefix by DO<<1|CD (wire.key_prefix) */
    unsigned char *bufs;     /* BATCH x DGRAM_MAX receive buffers */
    struct mmsghdr in[BATCH];
    struct iovec in_iov[BATCH];
    struct sockaddr_storage from[BATCH];
    struct mmsghdr out[BATCH];
    Reply replies[BATCH];
    /* the last source address seen and its text: one client sends many queries */
    struct sockaddr_storage last_addr;
    socklen_t last_len;
    PyObject *last_host;
    Layout entry_layout;     /* cache.store.Entry */
    Layout tally_layout;     /* stats.Cell */
    /* what ready() serves (attach): the listeners' UDP protocol, the clock, the
     * Python callables */
    PyObject *proto, *now, *hit_path, *slow;
    int now_is_monotonic;
    /* the hit path's state, read by attach() and refresh() (load_state) */
    PyObject *entries, *renew, *opt_plain, *opt_do, *allowed, *stats;
} HitLoop;

static PyObject *one;
static PyObject *time_monotonic; /* time.monotonic: ready() reads CLOCK_MONOTONIC itself for it */
static PyObject *s_fresh_until, *s_aged_until, *s_aged, *s_hdr, *s_hdr_opt, *s_tally, *s_fresh;
static PyObject *s_stored_at, *s_body, *s_ttl_offsets, *s_prefetch_after, *s_move_to_end;
static PyObject *s_renew, *s_fast, *s_entries, *s_opt_fresh, *s_allowed, *s_stats, *s_queries_udp;

/* The offset of a writable object slot (a __slots__ member), or -1. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *d = _PyType_Lookup(type, name); /* borrowed; no Python code runs */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type))
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY))
        return -1;
    return m->offset;
}

/* The layout for ``type`` (resolved on first use, again if the type changes). */
static Layout *
layout_for(Layout *l, PyTypeObject *type, PyObject *const *names, int n)
{
    if (l->type == type)
        return l;
    Py_XSETREF(l->type, (PyTypeObject *)Py_NewRef(type));
    l->ok = 1;
    for (int i = 0; i < n; i++)
        if ((l->off[i] = slot_offset(type, names[i])) < 0)
            l->ok = 0;
    return l;
}

/* 1 and *out set if ``v`` is an exact float or int (the clock's times), else 0. */
static inline int
number(PyObject *v, double *out)
{
    if (v != NULL && PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    if (v != NULL && PyLong_CheckExact(v)) {
        *out = PyLong_AsDouble(v);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    }
    return 0;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static void
reply_release(Reply *r)
{
    for (int i = 0; i < 3; i++)
        Py_CLEAR(r->refs[i]);
}

/* True if the last 11 bytes look like an EDNS OPT record without options: the
 * shape FastPath._opt_at remembers.  With such a tail after a longer OPT the
 * Python path may read the question differently (its memo), so we decline. */
static int
tail_is_plain_opt(const unsigned char *d, Py_ssize_t n)
{
    const unsigned char *t = d + n - 11;
    return n >= 23 && t[0] == 0 && t[1] == 0 && t[2] == 0x29 && t[6] == 0 && t[9] == 0 && t[10] == 0;
}

/* Entry.aged_body(now) + the LRU touch of FastPath.renew, for an entry whose
 * prefetch is not due (the common renewal): 1 done, 0 left to Python (a prefetch
 * is due, or anything unexpected; nothing changed), -1 error set.  The age is the
 * time cached rounded up to whole seconds (cache/store.py says why), every TTL
 * at ttl_offsets lowered by it, floored at 0 (wire.age_body); tests compare the
 * result with Entry.aged_body on a copy of the entry. */
static int
renew_here(PyObject *entries, PyObject *key, PyObject *entry, Layout *el, double now)
{
    double stored_at, prefetch_after;
    if (!number(SLOT(entry, el->off[E_STORED_AT]), &stored_at)
        || !number(SLOT(entry, el->off[E_PREFETCH_AFTER]), &prefetch_after) || now >= prefetch_after)
        return 0;
    PyObject *body = SLOT(entry, el->off[E_BODY]), *offsets = SLOT(entry, el->off[E_TTL_OFFSETS]);
    if (body == NULL || offsets == NULL || !PyBytes_CheckExact(body) || !PyTuple_CheckExact(offsets))
        return 0;
    double age_f = ceil(now - stored_at);
    if (!(age_f >= 0.0 && age_f < 4294967296.0))
        return 0;
    long long age = (long long)age_f;
    Py_ssize_t n = PyBytes_GET_SIZE(body), count = PyTuple_GET_SIZE(offsets);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = PyTuple_GET_ITEM(offsets, i);
        if (!PyLong_CheckExact(o))
            return 0;
        Py_ssize_t off = PyLong_AsSsize_t(o);
        if (off < 0 || off > n - 4) {
            PyErr_Clear();
            return 0; /* Python's struct.error, in Python's path */
        }
    }
    PyObject *aged = count ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(body), n) : Py_NewRef(body);
    if (aged == NULL)
        return -1;
    unsigned char *a = (unsigned char *)PyBytes_AS_STRING(aged);
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(body);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(offsets, i));
        long long ttl = ((long long)b[off] << 24 | b[off + 1] << 16 | b[off + 2] << 8 | b[off + 3]) - age;
        unsigned long v = ttl > 0 ? (unsigned long)ttl : 0;
        a[off] = (unsigned char)(v >> 24);
        a[off + 1] = (unsigned char)(v >> 16);
        a[off + 2] = (unsigned char)(v >> 8);
        a[off + 3] = (unsigned char)v;
    }
    PyObject *until = PyFloat_FromDouble(stored_at + (double)age);
    PyObject *moved = until ? PyObject_CallMethodOneArg(entries, s_move_to_end, key) : NULL; /* LRU touch */
    if (moved == NULL) {
        Py_DECREF(aged);
        Py_XDECREF(until);
        return -1;
    }
    Py_DECREF(moved);
    Py_SETREF(SLOT(entry, el->off[E_AGED]), aged);
    Py_SETREF(SLOT(entry, el->off[E_AGED_UNTIL]), until);
    return 1;
}

/* The hit path for one datagram.  1: answered (r filled, references held),
 * 0: declined, -1: a Python error is set (the caller declines and clears it). */
static int
answer_one(HitLoop *self, PyObject *entries, PyObject *opt_plain, PyObject *opt_do, PyObject *renew,
           const unsigned char *d, Py_ssize_t n, double now, Reply *r)
{
    /* Header bytes 2..12 (fastpath._FAST_HEADERS): QR=0, opcode QUERY, AA=TC=0,
     * RD=1, Z=0, AD and CD either way; QDCOUNT=1, AN=NS=0, AR=0 or 1. */
    if (n < 12 || d[2] != 0x01 || (d[3] & ~0x30) || d[4] || d[5] != 1 || d[6] || d[7] || d[8] || d[9] || d[10]
        || d[11] > 1)
        return 0;
    int cd = (d[3] & 0x10) ? 1 : 0, edns = d[11], dobit = 0;
    Py_ssize_t qlen, limit = 512;
    if (!edns) {
        qlen = n - 12; /* no EDNS: the question runs to the end of the datagram */
    } else {
        /* The OPT record follows the first zero byte (the name's root label) and
         * the type and class (fastpath._opt_at: RFC 6891 section 6.1.2). */
        const unsigned char *z = memchr(d + 12, 0, (size_t)(n - 12));
        if (z == NULL)
            return 0;
        Py_ssize_t e = (z - d) + 5;
        if (n < e + 11 || d[e] || d[e + 1] || d[e + 2] != 0x29 || d[e + 6])
            return 0;
        if (n != e + 11 + (d[e + 9] << 8 | d[e + 10]))
            return 0;
        if (n > e + 11 && tail_is_plain_opt(d, n))
            return 0;
        Py_ssize_t size = d[e + 3] << 8 | d[e + 4];
        limit = size > 512 ? size : 512;
        dobit = d[e + 7] >> 7;
        qlen = e - 12;
    }
    PyObject *prefix = self->prefixes[dobit << 1 | cd];
    Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
    PyObject *key = PyBytes_FromStringAndSize(NULL, plen + qlen);
    if (key == NULL)
        return -1;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    memcpy(k, PyBytes_AS_STRING(prefix), (size_t)plen);
    for (Py_ssize_t i = 0; i < qlen; i++) { /* bytes.lower(): ASCII only */
        unsigned char c = d[12 + i];
        k[plen + i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    }
    PyObject *entry = PyDict_GetItemWithError(entries, key); /* borrowed */
    if (entry == NULL) {
        Py_DECREF(key);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(entry); /* renew() runs Python code, which may drop the dict's reference */
    int rc = 0, renewed = 0;
    PyObject *const entry_names[E_COUNT] = {s_fresh_until, s_aged_until, s_hdr,  s_hdr_opt,     s_aged,
                                            s_tally,       s_stored_at,  s_body, s_ttl_offsets, s_prefetch_after};
    PyObject *const tally_names[] = {s_fresh};
    PyObject *opt = edns ? (dobit ? opt_do : opt_plain) : NULL;
    PyObject *hdr, *body, *tally, *count;
    size_t hlen, blen, olen = opt ? (size_t)PyBytes_GET_SIZE(opt) : 0, len;
read:
    /* Between here and the reply no Python code runs (exact floats, ints and
     * bytes only), so the borrowed slot values stay valid. */
    {
        Layout *el = layout_for(&self->entry_layout, Py_TYPE(entry), entry_names, E_COUNT);
        if (!el->ok)
            goto done; /* not the Entry we know: Python decides */
        /* The entry's objects are usually cold (a name is asked again only so
         * often): ask for them all at once rather than one miss after another. */
        __builtin_prefetch(SLOT(entry, el->off[E_FRESH_UNTIL]));
        __builtin_prefetch(SLOT(entry, el->off[E_AGED_UNTIL]));
        __builtin_prefetch(SLOT(entry, el->off[edns ? E_HDR_OPT : E_HDR]));
        __builtin_prefetch(SLOT(entry, el->off[E_AGED]));
        double fresh_until, aged_until;
        if (!number(SLOT(entry, el->off[E_FRESH_UNTIL]), &fresh_until)
            || !number(SLOT(entry, el->off[E_AGED_UNTIL]), &aged_until))
            goto done;
        if (!(now < fresh_until)) /* plan row "fresh" only; stale answers are Python's */
            goto done;
        hdr = SLOT(entry, el->off[edns ? E_HDR_OPT : E_HDR]);
        body = SLOT(entry, el->off[E_AGED]);
        tally = SLOT(entry, el->off[E_TALLY]);
        if (hdr == NULL || body == NULL || tally == NULL || !PyBytes_CheckExact(hdr) || !PyBytes_CheckExact(body))
            goto done;
        Layout *tl = layout_for(&self->tally_layout, Py_TYPE(tally), tally_names, 1);
        if (!tl->ok)
            goto done;
        count = SLOT(tally, tl->off[T_FRESH]);
        if (count == NULL || !PyLong_CheckExact(count))
            goto done;
        hlen = (size_t)PyBytes_GET_SIZE(hdr);
        blen = (size_t)PyBytes_GET_SIZE(body); /* aging changes TTLs, never the length */
        len = 2 + hlen + (size_t)qlen + blen + olen;
        if (len > (size_t)limit) /* the slow path sends TC=1 (RFC 1035 section 4.2.1) */
            goto done;
        if (now > aged_until) {
            /* The aged copy is a second old: renew it as FastPath.renew does (the
             * TTLs aged, the LRU touched; here unless a prefetch is due, else by
             * calling FastPath.renew), then read again. */
            if (renew == NULL || renew == Py_None || renewed)
                goto done;
            int here = renew_here(entries, key, entry, el, now);
            if (here < 0) {
                rc = -1;
                goto done;
            }
            if (here) {
                renewed = 1;
                goto read;
            }
            PyObject *when = PyFloat_FromDouble(now);
            PyObject *fresh = when ? PyObject_CallFunctionObjArgs(renew, key, entry, when, NULL) : NULL;
            Py_XDECREF(when);
            if (fresh == NULL) {
                rc = -1;
                goto done;
            }
            Py_DECREF(fresh);
            renewed = 1;
            goto read;
        }
        /* entry.tally.fresh += 1: the per-entry metrics cell (stats.HitTally) */
        PyObject *next = PyNumber_Add(count, one);
        if (next == NULL) {
            rc = -1;
            goto done;
        }
        Py_SETREF(SLOT(tally, tl->off[T_FRESH]), next); /* the old int's dealloc runs no Python code */
    }
    if (len <= INLINE_MAX) { /* one buffer, one iovec */
        unsigned char *p = r->inline_buf;
        memcpy(p, d, 2);
        p += 2;
        memcpy(p, PyBytes_AS_STRING(hdr), hlen);
        p += hlen;
        memcpy(p, d + 12, (size_t)qlen);
        p += qlen;
        memcpy(p, PyBytes_AS_STRING(body), blen);
        p += blen;
        if (opt)
            memcpy(p, PyBytes_AS_STRING(opt), olen);
        r->iov[0].iov_base = r->inline_buf;
        r->iov[0].iov_len = len;
        r->niov = 1;
        r->len = len;
        rc = 1;
        goto done;
    }
    /* a larger reply: sent from the pieces, which are held until sent */
    r->iov[0].iov_base = (void *)d;
    r->iov[0].iov_len = 2;
    r->iov[1].iov_base = PyBytes_AS_STRING(hdr);
    r->iov[1].iov_len = hlen;
    r->iov[2].iov_base = (void *)(d + 12);
    r->iov[2].iov_len = (size_t)qlen;
    r->iov[3].iov_base = PyBytes_AS_STRING(body);
    r->iov[3].iov_len = blen;
    r->niov = 4;
    r->refs[0] = Py_NewRef(hdr);
    r->refs[1] = Py_NewRef(body);
    if (opt) {
        r->iov[4].iov_base = PyBytes_AS_STRING(opt);
        r->iov[4].iov_len = olen;
        r->niov = 5;
        r->refs[2] = Py_NewRef(opt);
    }
    r->len = len;
    rc = 1;
done:
    Py_DECREF(entry);
    Py_DECREF(key);
    return rc;
}

static int
check_state(PyObject *entries, PyObject *opt_plain, PyObject *opt_do)
{
    if (!PyDict_Check(entries) || !PyBytes_CheckExact(opt_plain) || !PyBytes_CheckExact(opt_do)) {
        PyErr_SetString(PyExc_TypeError, "entries must be a dict, the OPT records bytes");
        return -1;
    }
    return 0;
}

/* The source address as Python's datagram_received gets it from uvloop:
 * (host, port) or (host, port, flowinfo, scope_id); host by inet_ntop. */
static PyObject *
host_text(HitLoop *self, const struct sockaddr_storage *ss, socklen_t len)
{
    if (self->last_host != NULL && len == self->last_len) {
        int same = 0;
        if (ss->ss_family == AF_INET && self->last_addr.ss_family == AF_INET)
            same = ((const struct sockaddr_in *)ss)->sin_addr.s_addr
                   == ((const struct sockaddr_in *)&self->last_addr)->sin_addr.s_addr;
        else if (ss->ss_family == AF_INET6 && self->last_addr.ss_family == AF_INET6)
            same = !memcmp(&((const struct sockaddr_in6 *)ss)->sin6_addr,
                           &((const struct sockaddr_in6 *)&self->last_addr)->sin6_addr, 16);
        if (same) {
            Py_INCREF(self->last_host);
            return self->last_host;
        }
    }
    char text[INET6_ADDRSTRLEN];
    const void *src;
    if (ss->ss_family == AF_INET)
        src = &((const struct sockaddr_in *)ss)->sin_addr;
    else if (ss->ss_family == AF_INET6)
        src = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    else
        return PyUnicode_FromString("");
    if (inet_ntop(ss->ss_family, src, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *host = PyUnicode_FromString(text);
    if (host == NULL)
        return NULL;
    Py_XSETREF(self->last_host, Py_NewRef(host));
    memcpy(&self->last_addr, ss, sizeof *ss);
    self->last_len = len;
    return host;
}

static PyObject *
address_tuple(PyObject *host, const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return Py_BuildValue("(Oi)", host, ntohs(((const struct sockaddr_in *)ss)->sin_port));
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        return Py_BuildValue("(OiII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    return Py_BuildValue("(Oi)", host, 0);
}

/* One batch: a recvmmsg of up to BATCH datagrams, the hits answered and sent
 * with one sendmmsg.  ``entries`` is the cache dict, or None to answer nothing
 * here (query log on, rate limiting on); ``allowed`` the ACL memo of admitted
 * addresses.  Sets *got (datagrams read), *hits, *errors (hits the kernel
 * refused), *declined (a list of (data, addr) for the Python path, or NULL) and
 * *unsent (hits the socket had no room for, or NULL).  0, or -1 with an error set. */
static int
serve_batch(HitLoop *self, PyObject *entries, PyObject *allowed, double now, PyObject *opt_plain,
            PyObject *opt_do, PyObject *renew, int *got_out, int *hits_out, int *errors_out, PyObject **declined_out,
            PyObject **unsent_out)
{
    int hits_on = entries != Py_None;
    *got_out = *hits_out = *errors_out = 0;
    *declined_out = *unsent_out = NULL;
    for (int i = 0; i < BATCH; i++) /* the rest of the headers was set up by init */
        self->in[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    int got = recvmmsg(self->fd, self->in, BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    PyObject *declined = NULL, *unsent = NULL;
    int nout = 0, errors = 0, rc = -1;
    for (int i = 0; i < got; i++) {
        const unsigned char *d = self->bufs + (size_t)i * SLOT_STRIDE;
        Py_ssize_t n = (Py_ssize_t)self->in[i].msg_len;
        socklen_t alen = self->in[i].msg_hdr.msg_namelen;
        PyObject *host = host_text(self, &self->from[i], alen);
        if (host == NULL)
            goto fail;
        int ok = 0;
        if (hits_on) {
            int admitted = PySet_Contains(allowed, host);
            if (admitted < 0) {
                Py_DECREF(host);
                goto fail;
            }
            if (admitted) {
                Reply *r = &self->replies[nout];
                ok = answer_one(self, entries, opt_plain, opt_do, renew, d, n, now, r);
                if (ok < 0) { /* a layout we did not expect: Python's path decides */
                    PyErr_Clear();
                    ok = 0;
                }
                if (ok) {
                    struct msghdr *m = &self->out[nout].msg_hdr; /* zeroed by init */
                    m->msg_name = &self->from[i];
                    m->msg_namelen = alen;
                    m->msg_iov = r->iov;
                    m->msg_iovlen = (size_t)r->niov;
                    nout++;
                }
            }
        }
        if (!ok) {
            if (declined == NULL && (declined = PyList_New(0)) == NULL) {
                Py_DECREF(host);
                goto fail;
            }
            PyObject *addr = address_tuple(host, &self->from[i]);
            PyObject *data = addr ? PyBytes_FromStringAndSize((const char *)d, n) : NULL;
            PyObject *pair = data ? PyTuple_Pack(2, data, addr) : NULL;
            Py_XDECREF(addr);
            Py_XDECREF(data);
            if (pair == NULL || PyList_Append(declined, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(host);
                goto fail;
            }
            Py_DECREF(pair);
        }
        Py_DECREF(host);
    }
    /* Send the hits.  A message the kernel rejects (say EPERM from a firewall
     * rule) is skipped, as sendto's error would be; EAGAIN hands the rest back. */
    int off = 0;
    while (off < nout) {
        int sent = sendmmsg(self->fd, self->out + off, (unsigned)(nout - off), MSG_DONTWAIT);
        if (sent > 0) {
            off += sent;
            continue;
        }
        if (sent == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            if ((unsent = PyList_New(0)) == NULL)
                goto fail;
            for (; off < nout; off++) {
                Reply *r = &self->replies[off];
                PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r->len);
                if (data == NULL)
                    goto fail;
                char *p = PyBytes_AS_STRING(data);
                for (int j = 0; j < r->niov; j++) {
                    memcpy(p, r->iov[j].iov_base, r->iov[j].iov_len);
                    p += r->iov[j].iov_len;
                }
                const struct sockaddr_storage *to = self->out[off].msg_hdr.msg_name;
                PyObject *host = host_text(self, to, self->out[off].msg_hdr.msg_namelen);
                PyObject *addr = host ? address_tuple(host, to) : NULL;
                PyObject *pair = addr ? PyTuple_Pack(2, data, addr) : NULL;
                Py_XDECREF(host);
                Py_XDECREF(addr);
                Py_DECREF(data);
                if (pair == NULL || PyList_Append(unsent, pair) < 0) {
                    Py_XDECREF(pair);
                    goto fail;
                }
                Py_DECREF(pair);
            }
            break;
        }
        if (errno == EINTR)
            continue;
        errors++;
        off++;
    }
    *got_out = got;
    *hits_out = nout;
    *errors_out = errors;
    *declined_out = declined;
    *unsent_out = unsent;
    declined = unsent = NULL;
    rc = 0;
fail:
    for (int i = 0; i < nout; i++)
        reply_release(&self->replies[i]);
    Py_XDECREF(declined);
    Py_XDECREF(unsent);
    return rc;
}

static int
check_allowed(PyObject *allowed)
{
    if (!PyAnySet_Check(allowed)) {
        PyErr_SetString(PyExc_TypeError, "allowed must be a set");
        return -1;
    }
    return 0;
}

/* serve(entries, allowed, now, opt_plain, opt_do) -> (received, hits, declined, unsent, send_errors)
 *
 * One batch (serve_batch), for tests; the listener uses ready().  ``declined`` and
 * ``unsent`` are lists of (data, addr) or None; ``renew`` is FastPath.renew. */
static PyObject *
HitLoop_serve(HitLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "serve(entries, allowed, now, opt_plain, opt_do, renew)");
        return NULL;
    }
    PyObject *entries = args[0], *allowed = args[1], *opt_plain = args[3], *opt_do = args[4];
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (entries != Py_None && check_state(entries, opt_plain, opt_do) < 0)
        return NULL;
    if (check_allowed(allowed) < 0)
        return NULL;
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    int got, hits, errors;
    PyObject *declined, *unsent;
    PyObject *renew = args[5];
    if (serve_batch(self, entries, allowed, now, opt_plain, opt_do, renew, &got, &hits, &errors, &declined,
                    &unsent) < 0)
        return NULL;
    PyObject *result = Py_BuildValue("(iiOOi)", got, hits, declined ? declined : Py_None,
                                     unsent ? unsent : Py_None, errors);
    Py_XDECREF(declined);
    Py_XDECREF(unsent);
    return result;
}

/* The raised exception, cleared (PyErr_GetRaisedException before Python 3.12). */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ``obj.name += n`` */
static int
add_to_attr(PyObject *obj, PyObject *name, long n)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    PyObject *inc = PyLong_FromLong(n);
    PyObject *sum = inc ? PyNumber_Add(v, inc) : NULL;
    Py_DECREF(v);
    Py_XDECREF(inc);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int HitLoop_clear_refs(HitLoop *self);

/* Read what ready() serves from the protocol, as it is now: its hit path
 * (``protocol.fast``; ``hit_path(fast)`` in Python says whether it is a FastPath
 * whose hits may be answered here), that FastPath's entries, renew and fresh OPT
 * records, the ACL memo and the stats.  Called by attach() and refresh(): the
 * listeners call refresh() after a reload re-points or reconfigures the hit path
 * (Listeners.reconfigure, which runs after Pipeline.configure), so a wake-up
 * reads no attribute at all.  The ACL memo is a set changed in place. */
static int
load_state(HitLoop *self)
{
    PyObject *fast = NULL, *hit_path = NULL, *hitpath = NULL, *entries = NULL, *renew = NULL, *opts = NULL;
    PyObject *allowed = NULL, *stats = NULL;
    int rc = -1;
    if ((fast = PyObject_GetAttr(self->proto, s_fast)) == NULL)
        goto done;
    hit_path = Py_NewRef(self->hit_path);
    if ((hitpath = PyObject_CallOneArg(hit_path, fast)) == NULL)
        goto done;
    if ((allowed = PyObject_GetAttr(self->proto, s_allowed)) == NULL || check_allowed(allowed) < 0)
        goto done;
    if ((stats = PyObject_GetAttr(self->proto, s_stats)) == NULL)
        goto done;
    if (hitpath == Py_None) {
        entries = Py_NewRef(Py_None);
        renew = Py_NewRef(Py_None);
        opts = PyTuple_Pack(2, Py_None, Py_None);
    } else {
        if ((entries = PyObject_GetAttr(hitpath, s_entries)) == NULL
            || (renew = PyObject_GetAttr(hitpath, s_renew)) == NULL
            || (opts = PyObject_GetAttr(hitpath, s_opt_fresh)) == NULL)
            goto done;
        if (!PyTuple_CheckExact(opts) || PyTuple_GET_SIZE(opts) != 2) {
            PyErr_SetString(PyExc_TypeError, "FastPath.opt_fresh: a tuple of 2 bytes");
            goto done;
        }
        if (check_state(entries, PyTuple_GET_ITEM(opts, 0), PyTuple_GET_ITEM(opts, 1)) < 0)
            goto done;
    }
    if (opts == NULL)
        goto done;
    Py_XSETREF(self->entries, entries);
    Py_XSETREF(self->renew, renew);
    Py_XSETREF(self->opt_plain, Py_NewRef(PyTuple_GET_ITEM(opts, 0)));
    Py_XSETREF(self->opt_do, Py_NewRef(PyTuple_GET_ITEM(opts, 1)));
    Py_XSETREF(self->allowed, allowed);
    Py_XSETREF(self->stats, stats);
    entries = renew = allowed = stats = NULL;
    rc = 0;
done:
    Py_XDECREF(fast);
    Py_XDECREF(hit_path);
    Py_XDECREF(hitpath);
    Py_XDECREF(entries);
    Py_XDECREF(renew);
    Py_XDECREF(opts);
    Py_XDECREF(allowed);
    Py_XDECREF(stats);
    return rc;
}

/* ready(): the socket's add_reader callback.  Up to MAX_BATCHES batches while
 * they come full, stopping after BUDGET seconds so that timers and TCP wait at
 * most about a millisecond; what is left is read on the loop's next turn (the
 * reader is level-triggered).  Hits are added to protocol.stats.queries_udp;
 * whatever Python must see — declined datagrams, unsent replies, send errors, a
 * receive error — goes to ``slow(declined, unsent, send_errors, error)``, which
 * may close the transport (then this stops). */
static PyObject *
HitLoop_ready(HitLoop *self, PyObject *Py_UNUSED(ignored))
{
    if (self->proto == NULL || self->fd < 0)
        Py_RETURN_NONE; /* closed: a stale callback */
    /* our own references: slow() may close the transport, which clears the loop's */
    PyObject *entries = Py_NewRef(self->entries), *renew = Py_NewRef(self->renew);
    PyObject *opt_plain = Py_NewRef(self->opt_plain), *opt_do = Py_NewRef(self->opt_do);
    PyObject *allowed = Py_NewRef(self->allowed), *stats = Py_NewRef(self->stats), *result = NULL;
    double now;
    if (self->now_is_monotonic) { /* time.monotonic (the system clock): CLOCK_MONOTONIC, no call */
        now = monotonic_now();
    } else {
        PyObject *nowobj = PyObject_CallNoArgs(self->now); /* a test's clock */
        if (nowobj == NULL)
            goto done;
        now = PyFloat_AsDouble(nowobj);
        Py_DECREF(nowobj);
        if (now == -1.0 && PyErr_Occurred())
            goto done;
    }
    double deadline = 0.0;
    for (int batch = 0; batch < MAX_BATCHES && self->fd >= 0; batch++) {
        int got, hits, errors;
        PyObject *declined, *unsent;
        PyObject *exc = NULL;
        if (serve_batch(self, entries, allowed, now, opt_plain, opt_do, renew, &got, &hits, &errors, &declined,
                        &unsent) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OSError))
                goto done;
            exc = take_exception();
            got = 0;
        }
        if (hits && add_to_attr(stats, s_queries_udp, hits) < 0) {
            Py_XDECREF(declined);
            Py_XDECREF(unsent);
            Py_XDECREF(exc);
            goto done;
        }
        if (declined || unsent || errors || exc) {
            PyObject *slow = Py_NewRef(self->slow);
            PyObject *r = PyObject_CallFunction(slow, "OOiO", declined ? declined : Py_None,
                                                unsent ? unsent : Py_None, errors, exc ? exc : Py_None);
            Py_DECREF(slow);
            Py_XDECREF(declined);
            Py_XDECREF(unsent);
            Py_XDECREF(exc);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            if (exc)
                break;
        }
        if (got < BATCH) /* the receive buffer is empty: the common case below saturation */
            break;
        if (!batch) /* the clock is read only when batches come full */
            deadline = monotonic_now() + BUDGET;
        else if (monotonic_now() >= deadline)
            break; /* more is queued: the loop's other callbacks first, then we are called again */
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(entries);
    Py_DECREF(renew);
    Py_DECREF(opt_plain);
    Py_DECREF(opt_do);
    Py_DECREF(allowed);
    Py_DECREF(stats);
    return result;
}

/* attach(protocol, now, hit_path, slow): what ready() serves (see batch.py). */
static PyObject *
HitLoop_attach(HitLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "attach(protocol, now, hit_path, slow): the last three callable");
        return NULL;
    }
    Py_XSETREF(self->proto, Py_NewRef(args[0]));
    Py_XSETREF(self->now, Py_NewRef(args[1]));
    Py_XSETREF(self->hit_path, Py_NewRef(args[2]));
    Py_XSETREF(self->slow, Py_NewRef(args[3]));
    self->now_is_monotonic = args[1] == time_monotonic;
    if (load_state(self) < 0) {
        HitLoop_clear_refs(self);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* refresh(): read the protocol's hit path again (after a reload). */
static PyObject *
HitLoop_refresh(HitLoop *self, PyObject *Py_UNUSED(ignored))
{
    if (self->proto == NULL) {
        PyErr_SetString(PyExc_ValueError, "not attached");
        return NULL;
    }
    if (load_state(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* answer(data, entries, now, opt_plain, opt_do, renew) -> bytes | None: the hit
 * path for one datagram, no socket (tests hold it to FastPath.answer_fast). */
static PyObject *
HitLoop_answer(HitLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "answer(data: bytes, entries, now, opt_plain, opt_do, renew)");
        return NULL;
    }
    if (check_state(args[1], args[3], args[4]) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Reply r;
    memset(&r, 0, sizeof r);
    int ok = answer_one(self, args[1], args[3], args[4], args[5], (const unsigned char *)PyBytes_AS_STRING(args[0]),
                        PyBytes_GET_SIZE(args[0]), now, &r);
    if (ok < 0) {
        PyErr_Clear();
        ok = 0;
    }
    if (!ok)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r.len);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        for (int j = 0; j < r.niov; j++) {
            memcpy(p, r.iov[j].iov_base, r.iov[j].iov_len);
            p += r.iov[j].iov_len;
        }
    }
    reply_release(&r);
    return out;
}

static int
HitLoop_clear_refs(HitLoop *self)
{
    Py_CLEAR(self->proto);
    Py_CLEAR(self->now);
    Py_CLEAR(self->hit_path);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->entries);
    Py_CLEAR(self->renew);
    Py_CLEAR(self->opt_plain);
    Py_CLEAR(self->opt_do);
    Py_CLEAR(self->allowed);
    Py_CLEAR(self->stats);
    return 0;
}

static int
HitLoop_traverse(HitLoop *self, visitproc visit, void *arg)
{
    Py_VISIT(self->proto);
    Py_VISIT(self->now);
    Py_VISIT(self->hit_path);
    Py_VISIT(self->slow);
    Py_VISIT(self->entries);
    Py_VISIT(self->renew);
    Py_VISIT(self->opt_plain);
    Py_VISIT(self->opt_do);
    Py_VISIT(self->allowed);
    Py_VISIT(self->stats);
    return 0;
}

static PyObject *
HitLoop_close(HitLoop *self, PyObject *Py_UNUSED(ignored))
{
    self->fd = -1; /* the socket belongs to the transport, which closes it */
    HitLoop_clear_refs(self);
    Py_RETURN_NONE;
}

static int
HitLoop_init(HitLoop *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "prefixes", NULL};
    int fd;
    PyObject *prefixes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO", kwlist, &fd, &prefixes))
        return -1;
    if (!PyTuple_Check(prefixes) || PyTuple_GET_SIZE(prefixes) != 4) {
        PyErr_SetString(PyExc_TypeError, "prefixes: a tuple of 4 bytes (wire.key_prefix(0..3))");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        PyObject *p = PyTuple_GET_ITEM(prefixes, i);
        if (!PyBytes_CheckExact(p) || PyBytes_GET_SIZE(p) > 1) {
            PyErr_SetString(PyExc_TypeError, "prefixes: a tuple of 4 bytes (wire.key_prefix(0..3))");
            return -1;
        }
        Py_XSETREF(self->prefixes[i], Py_NewRef(p));
    }
    self->fd = fd;
    if (self->bufs == NULL && fd >= 0) {
        self->bufs = PyMem_RawMalloc((size_t)BATCH * SLOT_STRIDE);
        if (self->bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (int i = 0; i < BATCH && self->bufs != NULL; i++) {
        self->in_iov[i].iov_base = self->bufs + (size_t)i * SLOT_STRIDE;
        self->in_iov[i].iov_len = DGRAM_MAX;
        memset(&self->in[i], 0, sizeof self->in[i]);
        self->in[i].msg_hdr.msg_name = &self->from[i];
        self->in[i].msg_hdr.msg_iov = &self->in_iov[i];
        self->in[i].msg_hdr.msg_iovlen = 1;
        memset(&self->out[i], 0, sizeof self->out[i]);
    }
    return 0;
}

static void
HitLoop_dealloc(HitLoop *self)
{
    PyObject_GC_UnTrack(self);
    HitLoop_clear_refs(self);
    for (int i = 0; i < 4; i++)
        Py_CLEAR(self->prefixes[i]);
    Py_CLEAR(self->last_host);
    Py_CLEAR(self->entry_layout.type);
    Py_CLEAR(self->tally_layout.type);
    PyMem_RawFree(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef HitLoop_methods[] = {
    {"serve", (PyCFunction)(void (*)(void))HitLoop_serve, METH_FASTCALL,
     "serve(entries, allowed, now, opt_plain, opt_do, renew) -> (received, hits, declined, unsent, send_errors)"},
    {"answer", (PyCFunction)(void (*)(void))HitLoop_answer, METH_FASTCALL,
     "answer(data, entries, now, opt_plain, opt_do, renew) -> bytes | None"},
    {"attach", (PyCFunction)(void (*)(void))HitLoop_attach, METH_FASTCALL,
     "attach(protocol, now, hit_path, slow): what ready() serves"},
    {"ready", (PyCFunction)HitLoop_ready, METH_NOARGS, "The listener socket's add_reader callback."},
    {"refresh", (PyCFunction)HitLoop_refresh, METH_NOARGS, "Read the protocol's hit path again (after a reload)."},
    {"close", (PyCFunction)HitLoop_close, METH_NOARGS,
     "Forget the socket (the transport closes it) and what attach() gave."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HitLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resolver.serve._hitloop.HitLoop",
    .tp_basicsize = sizeof(HitLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)HitLoop_traverse,
    .tp_clear = (inquiry)HitLoop_clear_refs,
    .tp_doc = "HitLoop(fd, prefixes): batched UDP cache hits on one socket (see batch.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HitLoop_init,
    .tp_dealloc = (destructor)HitLoop_dealloc,
    .tp_methods = HitLoop_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hitloop", "The batched UDP cache-hit loop (see batch.py).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__hitloop(void)
{
    if (PyType_Ready(&HitLoopType) < 0)
        return NULL;
    one = PyLong_FromLong(1);
    s_fresh_until = PyUnicode_InternFromString("fresh_until");
    s_aged_until = PyUnicode_InternFromString("aged_until");
    s_aged = PyUnicode_InternFromString("aged");
    s_hdr = PyUnicode_InternFromString("hdr");
    s_hdr_opt = PyUnicode_InternFromString("hdr_opt");
    s_tally = PyUnicode_InternFromString("tally");
    s_fresh = PyUnicode_InternFromString("fresh");
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL)
        return NULL;
    time_monotonic = PyObject_GetAttrString(time_module, "monotonic");
    Py_DECREF(time_module);
    if (time_monotonic == NULL)
        return NULL;
    s_fast = PyUnicode_InternFromString("fast");
    s_renew = PyUnicode_InternFromString("renew");
    s_stored_at = PyUnicode_InternFromString("stored_at");
    s_body = PyUnicode_InternFromString("body");
    s_ttl_offsets = PyUnicode_InternFromString("ttl_offsets");
    s_prefetch_after = PyUnicode_InternFromString("prefetch_after");
    s_move_to_end = PyUnicode_InternFromString("move_to_end");
    s_entries = PyUnicode_InternFromString("entries");
    s_opt_fresh = PyUnicode_InternFromString("opt_fresh");
    s_allowed = PyUnicode_InternFromString("allowed");
    s_stats = PyUnicode_InternFromString("stats");
    s_queries_udp = PyUnicode_InternFromString("queries_udp");
    if (!one || !s_fresh_until || !s_aged_until || !s_aged || !s_hdr || !s_hdr_opt || !s_tally || !s_fresh || !s_fast
        || !s_entries || !s_opt_fresh || !s_allowed || !s_stats || !s_queries_udp || !s_renew
        || !s_stored_at || !s_body || !s_ttl_offsets || !s_prefetch_after || !s_move_to_end)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HitLoopType);
    if (PyModule_AddObject(m, "HitLoop", (PyObject *)&HitLoopType) < 0) {
        Py_DECREF(&HitLoopType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "BATCH", BATCH);
    PyModule_AddIntConstant(m, "MAX_BATCHES", MAX_BATCHES);
    PyModule_AddObject(m, "BUDGET", PyFloat_FromDouble(BUDGET));
    return m;
}
