/* The UDP cache-hit loop in native code (Linux): recvmmsg, hit lookup, sendmmsg.
 *
 * Why: a cache hit answered from uvloop's per-datagram callback costs ~0.6 x
 * Unbound's CPU per query; most of it is interpreter work around two system
 * calls per datagram (issue 19).  This module reads up to BATCH datagrams with one
 * recvmmsg(2), answers the plain fresh hits here, and sends them with one
 * sendmmsg(2).  Everything else is *declined*: handed back to Python as
 * (bytes, address) for today's datagram_received, unchanged.
 *
 * It answers only what FastPath.answer_fast (fastpath.py) answers with no side
 * effect but the hit counter: a fresh entry whose aged copy is current
 * (now <= aged_until).  Renewing the aged copy (once per second per entry, with
 * the LRU touch and the prefetch check), stale answers under the failure recheck
 * timer, clients the ACL memo does not know yet, TC=1, anything odd: declined.
 * So the Python path stays the reference, and tests/unit/test_hitloop.py holds
 * this code to it byte for byte.
 *
 * The reply is never copied: it is sent as an iovec of the client's ID and
 * question (RFC 1035 section 7.3: the reply echoes them, 0x20 case preserved)
 * and the entry's header, aged body and the pre-built OPT record (RFC 6891).
 * The GIL is held for a whole batch; batch.py bounds batches per callback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BATCH 64          /* datagrams per recvmmsg / sendmmsg */
#define DGRAM_MAX 65536   /* a UDP payload is at most 65,507 bytes: never truncated */
#define PIECES 5          /* ID, header, question, body, OPT */

typedef struct {
    struct iovec iov[PIECES];
    int niov;
    size_t len;
    PyObject *refs[3]; /* header, body, OPT: held until sent */
} Reply;

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
} HitLoop;

static PyObject *one;
static PyObject *s_fresh_until, *s_aged_until, *s_aged, *s_hdr, *s_hdr_opt, *s_tally, *s_fresh;

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

static int
get_double(PyObject *obj, PyObject *name, double *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (*out == -1.0 && PyErr_Occurred())
        return -1;
    return 0;
}

/* Bytes attribute (new reference) or NULL; *bad set when it is not bytes. */
static PyObject *
get_bytes(PyObject *obj, PyObject *name, int *bad)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v != NULL && !PyBytes_CheckExact(v)) {
        Py_DECREF(v);
        *bad = 1;
        return NULL;
    }
    return v;
}

/* The hit path for one datagram.  1: answered (r filled, references held),
 * 0: declined, -1: a Python error is set (the caller declines and clears it). */
static int
answer_one(HitLoop *self, PyObject *entries, PyObject *opt_plain, PyObject *opt_do,
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
    PyObject *entry = PyDict_GetItemWithError(entries, key);
    Py_DECREF(key);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(entry);
    int rc = -1, bad = 0;
    double fresh_until, aged_until;
    PyObject *hdr = NULL, *body = NULL, *tally = NULL, *count = NULL, *next = NULL;
    if (get_double(entry, s_fresh_until, &fresh_until) < 0)
        goto done;
    if (get_double(entry, s_aged_until, &aged_until) < 0)
        goto done;
    /* plan row "fresh", aged copy current; anything else is Python's */
    if (!(now < fresh_until && now <= aged_until)) {
        rc = 0;
        goto done;
    }
    hdr = get_bytes(entry, edns ? s_hdr_opt : s_hdr, &bad);
    if (hdr == NULL)
        goto done;
    body = get_bytes(entry, s_aged, &bad);
    if (body == NULL)
        goto done;
    PyObject *opt = edns ? (dobit ? opt_do : opt_plain) : NULL;
    size_t len = 2 + (size_t)PyBytes_GET_SIZE(hdr) + (size_t)qlen + (size_t)PyBytes_GET_SIZE(body)
                 + (opt ? (size_t)PyBytes_GET_SIZE(opt) : 0);
    if (len > (size_t)limit) { /* the slow path sends TC=1 (RFC 1035 section 4.2.1) */
        rc = 0;
        goto done;
    }
    /* entry.tally.fresh += 1: the per-entry metrics cell (stats.HitTally) */
    tally = PyObject_GetAttr(entry, s_tally);
    if (tally == NULL)
        goto done;
    count = PyObject_GetAttr(tally, s_fresh);
    if (count == NULL)
        goto done;
    next = PyNumber_Add(count, one);
    if (next == NULL || PyObject_SetAttr(tally, s_fresh, next) < 0)
        goto done;
    r->iov[0].iov_base = (void *)d;
    r->iov[0].iov_len = 2;
    r->iov[1].iov_base = PyBytes_AS_STRING(hdr);
    r->iov[1].iov_len = (size_t)PyBytes_GET_SIZE(hdr);
    r->iov[2].iov_base = (void *)(d + 12);
    r->iov[2].iov_len = (size_t)qlen;
    r->iov[3].iov_base = PyBytes_AS_STRING(body);
    r->iov[3].iov_len = (size_t)PyBytes_GET_SIZE(body);
    r->niov = 4;
    r->refs[0] = hdr;
    r->refs[1] = body;
    hdr = body = NULL;
    if (opt) {
        r->iov[4].iov_base = PyBytes_AS_STRING(opt);
        r->iov[4].iov_len = (size_t)PyBytes_GET_SIZE(opt);
        r->niov = 5;
        Py_INCREF(opt);
        r->refs[2] = opt;
    }
    r->len = len;
    rc = 1;
done:
    if (bad && rc < 0)
        rc = 0; /* not the layout we know: decline, Python decides */
    Py_XDECREF(hdr);
    Py_XDECREF(body);
    Py_XDECREF(tally);
    Py_XDECREF(count);
    Py_XDECREF(next);
    Py_DECREF(entry);
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

/* serve(entries, allowed, now, opt_plain, opt_do) -> (received, hits, declined, unsent, send_errors)
 *
 * One recvmmsg of up to BATCH datagrams.  ``entries`` is the cache dict, or None
 * to answer nothing here (query log on, rate limiting on); ``allowed`` the ACL
 * memo of admitted addresses.  ``declined`` lists (data, addr) for the Python
 * path; ``unsent`` (data, addr) hits the socket had no room for (EAGAIN). */
static PyObject *
HitLoop_serve(HitLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "serve(entries, allowed, now, opt_plain, opt_do)");
        return NULL;
    }
    PyObject *entries = args[0], *allowed = args[1], *opt_plain = args[3], *opt_do = args[4];
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    int hits_on = entries != Py_None;
    if (hits_on && check_state(entries, opt_plain, opt_do) < 0)
        return NULL;
    if (!PyAnySet_Check(allowed)) {
        PyErr_SetString(PyExc_TypeError, "allowed must be a set");
        return NULL;
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    for (int i = 0; i < BATCH; i++) {
        self->in_iov[i].iov_base = self->bufs + (size_t)i * DGRAM_MAX;
        self->in_iov[i].iov_len = DGRAM_MAX;
        memset(&self->in[i].msg_hdr, 0, sizeof(struct msghdr));
        self->in[i].msg_hdr.msg_name = &self->from[i];
        self->in[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        self->in[i].msg_hdr.msg_iov = &self->in_iov[i];
        self->in[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(self->fd, self->in, BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return Py_BuildValue("(iiOOi)", 0, 0, Py_None, Py_None, 0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *declined = NULL, *unsent = NULL, *result = NULL;
    int nout = 0, errors = 0;
    for (int i = 0; i < got; i++) {
        const unsigned char *d = self->bufs + (size_t)i * DGRAM_MAX;
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
                ok = answer_one(self, entries, opt_plain, opt_do, d, n, now, r);
                if (ok < 0) { /* a layout we did not expect: Python's path decides */
                    PyErr_Clear();
                    ok = 0;
                }
                if (ok) {
                    struct msghdr *m = &self->out[nout].msg_hdr;
                    memset(m, 0, sizeof *m);
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
    result = Py_BuildValue("(iiOOi)", got, nout, declined ? declined : Py_None, unsent ? unsent : Py_None, errors);
fail:
    for (int i = 0; i < nout; i++)
        reply_release(&self->replies[i]);
    Py_XDECREF(declined);
    Py_XDECREF(unsent);
    return result;
}

/* answer(data, entries, now, opt_plain, opt_do) -> bytes | None: the hit path
 * for one datagram, no socket (tests hold it to FastPath.answer_fast). */
static PyObject *
HitLoop_answer(HitLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "answer(data: bytes, entries, now, opt_plain, opt_do)");
        return NULL;
    }
    if (check_state(args[1], args[3], args[4]) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Reply r;
    memset(&r, 0, sizeof r);
    int ok = answer_one(self, args[1], args[3], args[4], (const unsigned char *)PyBytes_AS_STRING(args[0]),
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

static PyObject *
HitLoop_close(HitLoop *self, PyObject *Py_UNUSED(ignored))
{
    self->fd = -1; /* the socket belongs to the transport, which closes it */
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
        self->bufs = PyMem_RawMalloc((size_t)BATCH * DGRAM_MAX);
        if (self->bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void
HitLoop_dealloc(HitLoop *self)
{
    for (int i = 0; i < 4; i++)
        Py_CLEAR(self->prefixes[i]);
    Py_CLEAR(self->last_host);
    PyMem_RawFree(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef HitLoop_methods[] = {
    {"serve", (PyCFunction)(void (*)(void))HitLoop_serve, METH_FASTCALL,
     "serve(entries, allowed, now, opt_plain, opt_do) -> (received, hits, declined, unsent, send_errors)"},
    {"answer", (PyCFunction)(void (*)(void))HitLoop_answer, METH_FASTCALL,
     "answer(data, entries, now, opt_plain, opt_do) -> bytes | None"},
    {"close", (PyCFunction)HitLoop_close, METH_NOARGS, "Forget the socket (the transport closes it)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HitLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resolver.serve._hitloop.HitLoop",
    .tp_basicsize = sizeof(HitLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
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
    if (!one || !s_fresh_until || !s_aged_until || !s_aged || !s_hdr || !s_hdr_opt || !s_tally || !s_fresh)
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
    return m;
}
