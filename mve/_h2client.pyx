"""mve's native gRPC client: unary calls over libnghttp2 client sessions on one epoll loop.

``H2Client`` runs its own loop on one native thread with the GIL released (start()/stop()). Calls
are handed in and answers handed out in bulk: ``call()`` copies the request into C memory and
appends it to a submission queue (the loop is woken through an eventfd only when the queue was
empty), and ``take()`` drains every finished call at once when ``notify_fd`` (an eventfd written
only when the completion queue becomes non-empty) is readable. One HTTP/2 connection per address
(h2c with prior knowledge, no TLS), opened on first use with a non-blocking connect; the client
enforces each call's deadline itself. A cancelled call is never delivered. See docs/transport.md,
"The native client".
"""

from libc.errno cimport EAGAIN, EINPROGRESS, EINTR, errno
from libc.stdint cimport SIZE_MAX
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strerror, strlen
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write
from cpython.bytes cimport PyBytes_FromStringAndSize

from mve._h2io cimport (
    WRITE_NO_MEMORY,
    WRITE_SESSION_ERROR,
    WRITE_SOCKET_ERROR,
    append_pointer,
    arm_timer_at,
    now_ns,
    write_pending,
    write_session,
)

import base64
import threading
from urllib.parse import unquote_to_bytes

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

cdef enum:
    MAX_EVENTS = 256
    READ_BUFFER_BYTES = 256 * 1024
    SEND_HIGH_WATER = 1024 * 1024       # unsent bytes per connection before we stop asking nghttp2
    STREAM_WINDOW = 16 * 1024 * 1024    # so that a 6 MB message flows without waiting for updates
    CONNECTION_WINDOW = 64 * 1024 * 1024
    MAX_FRAME = 1024 * 1024
    MAX_ADDRESS = 255
    MAX_REFUSALS = 8                    # times a refused stream is sent again before UNAVAILABLE

# gRPC status codes used here
cdef enum:
    GRPC_OK = 0
    GRPC_CANCELLED = 1
    GRPC_UNKNOWN = 2
    GRPC_DEADLINE_EXCEEDED = 4
    GRPC_PERMISSION_DENIED = 7
    GRPC_RESOURCE_EXHAUSTED = 8
    GRPC_UNIMPLEMENTED = 12
    GRPC_INTERNAL = 13
    GRPC_UNAVAILABLE = 14
    GRPC_UNAUTHENTICATED = 16

cdef const char* H_METHOD = ":method"
cdef const char* H_POST = "POST"
cdef const char* H_SCHEME = ":scheme"
cdef const char* H_HTTP = "http"
cdef const char* H_PATH = ":path"
cdef const char* H_AUTHORITY = ":authority"
cdef const char* H_CONTENT_TYPE = "content-type"
cdef const char* H_GRPC = "application/grpc"
cdef const char* H_TE = "te"
cdef const char* H_TRAILERS = "trailers"
cdef const char* H_TIMEOUT = "grpc-timeout"

cdef uint8_t NO_COPY = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE
cdef int N_FIXED_HEADERS = 7


# ---------------------------------------------------------------------------------------------
# small C helpers

cdef inline void set_nv(nghttp2_nv* nv, const char* name, size_t namelen, const void* value, size_t valuelen,
                        uint8_t flags) noexcept nogil:
    nv.name = <uint8_t*>name
    nv.namelen = namelen
    nv.value = <uint8_t*>value
    nv.valuelen = valuelen
    nv.flags = flags


cdef size_t format_timeout(int64_t timeout_ns, char* out, size_t cap) noexcept nogil:
    """grpc-timeout for `timeout_ns`: at most 8 digits, in the finest unit that fits, rounded up."""
    cdef int64_t n
    if timeout_ns <= 0:
        return <size_t>snprintf(out, cap, "1n")
    n = (timeout_ns + 999) // 1000
    if n < 100000000:
        return <size_t>snprintf(out, cap, "%lldu", <long long>n)
    n = (timeout_ns + 999999) // 1000000
    if n < 100000000:
        return <size_t>snprintf(out, cap, "%lldm", <long long>n)
    n = (timeout_ns + 999999999) // 1000000000
    if n < 100000000:
        return <size_t>snprintf(out, cap, "%lldS", <long long>n)
    n = (n + 59) // 60
    if n < 100000000:
        return <size_t>snprintf(out, cap, "%lldM", <long long>n)
    n = (n + 59) // 60
    if n > 99999999:
        n = 99999999
    return <size_t>snprintf(out, cap, "%lldH", <long long>n)


cdef int grpc_code_of_http(int http_status) noexcept nogil:
    """grpc-core's mapping of a non-200 HTTP status to a gRPC code."""
    if http_status == 400:
        return GRPC_INTERNAL
    if http_status == 401:
        return GRPC_UNAUTHENTICATED
    if http_status == 403:
        return GRPC_PERMISSION_DENIED
    if http_status == 404:
        return GRPC_UNIMPLEMENTED
    if http_status == 429 or http_status == 502 or http_status == 503 or http_status == 504:
        return GRPC_UNAVAILABLE
    return GRPC_UNKNOWN


cdef int grpc_code_of_reset(uint32_t error_code) noexcept nogil:
    """grpc-core's mapping of an HTTP/2 RST_STREAM error code to a gRPC code."""
    if error_code == NGHTTP2_CANCEL:
        return GRPC_CANCELLED
    if error_code == NGHTTP2_REFUSED_STREAM:
        return GRPC_UNAVAILABLE
    if error_code == NGHTTP2_ENHANCE_YOUR_CALM:
        return GRPC_RESOURCE_EXHAUSTED
    if error_code == NGHTTP2_INADEQUATE_SECURITY:
        return GRPC_PERMISSION_DENIED
    return GRPC_INTERNAL


# ---------------------------------------------------------------------------------------------
# the deadline heap (loop thread only): a binary min-heap of calls by deadline_ns

cdef inline void heap_set(Client* cl, size_t i, Call* c) noexcept nogil:
    cl.heap[i] = c
    c.heap_index = i


cdef void heap_up(Client* cl, size_t i) noexcept nogil:
    cdef Call* c = cl.heap[i]
    cdef size_t parent
    while i > 0:
        parent = (i - 1) // 2
        if cl.heap[parent].deadline_ns <= c.deadline_ns:
            break
        heap_set(cl, i, cl.heap[parent])
        i = parent
    heap_set(cl, i, c)


cdef void heap_down(Client* cl, size_t i) noexcept nogil:
    cdef Call* c = cl.heap[i]
    cdef size_t child
    while True:
        child = 2 * i + 1
        if child >= cl.heap_len:
            break
        if child + 1 < cl.heap_len and cl.heap[child + 1].deadline_ns < cl.heap[child].deadline_ns:
            child += 1
        if c.deadline_ns <= cl.heap[child].deadline_ns:
            break
        heap_set(cl, i, cl.heap[child])
        i = child
    heap_set(cl, i, c)


cdef bint heap_push(Client* cl, Call* c) noexcept nogil:
    cdef Call** grown
    if cl.heap_len == cl.heap_cap:
        grown = <Call**>realloc(cl.heap, (cl.heap_cap * 2 + 64) * sizeof(Call*))
        if grown == NULL:
            return False
        cl.heap = grown
        cl.heap_cap = cl.heap_cap * 2 + 64
    cl.heap_len += 1
    heap_set(cl, cl.heap_len - 1, c)
    heap_up(cl, cl.heap_len - 1)
    return True


cdef void heap_remove(Client* cl, Call* c) noexcept nogil:
    cdef size_t i = c.heap_index
    cdef Call* last
    if i == SIZE_MAX:
        return
    c.heap_index = SIZE_MAX
    cl.heap_len -= 1
    if i == cl.heap_len:
        return
    last = cl.heap[cl.heap_len]
    heap_set(cl, i, last)
    if i > 0 and cl.heap[(i - 1) // 2].deadline_ns > last.deadline_ns:
        heap_up(cl, i)
    else:
        heap_down(cl, i)


# ---------------------------------------------------------------------------------------------
# calls

cdef void call_free(Call* c) noexcept nogil:
    free(c.block)
    free(c.body)
    free(c.message)
    free(c.trailers)
    free(c.reply)
    free(c)


cdef void mark_dirty(Client* cl, HConn* conn) noexcept nogil:
    if not conn.dirty and append_pointer(<void***>&cl.dirty, &cl.n_dirty, &cl.dirty_cap, conn):
        conn.dirty = True


cdef void reset_stream(Call* c, uint32_t error_code) noexcept nogil:
    """RST_STREAM for the call's stream (before `detach`), sent at the end of the loop turn."""
    cdef HConn* conn = c.conn
    if conn != NULL and c.stream_id > 0 and not conn.dead:
        nghttp2_submit_rst_stream(conn.session, NGHTTP2_FLAG_NONE, c.stream_id, error_code)
        mark_dirty(conn.client, conn)


cdef void detach(Client* cl, Call* c) noexcept nogil:
    """Take the call off its stream, its connection and the deadline heap.

    From here on nghttp2 finds no call for the stream: its callbacks and the request's data
    provider see NULL, so the call can be delivered or freed at once.
    """
    cdef HConn* conn = c.conn
    if conn != NULL:
        if c.stream_id > 0:
            nghttp2_session_set_stream_user_data(conn.session, c.stream_id, NULL)
        if c.prev != NULL:
            c.prev.conn_next = c.conn_next
        else:
            conn.calls = c.conn_next
        if c.conn_next != NULL:
            c.conn_next.prev = c.prev
        c.prev = c.conn_next = NULL
        conn.n_calls -= 1
        c.conn = NULL
        if conn.retiring:
            mark_dirty(cl, conn)
    heap_remove(cl, c)


cdef void finish(Client* cl, Call* c) noexcept nogil:
    """The call is answered: off its stream and onto this turn's finished list."""
    detach(cl, c)
    free(c.body)        # kept until now for a retry of a refused stream
    c.body = NULL
    c.state = CALL_FINISHED
    c.next = NULL
    if cl.fin_tail != NULL:
        cl.fin_tail.next = c
    else:
        cl.fin_head = c
    cl.fin_tail = c


cdef void set_message(Call* c, const char* text, size_t n, bint encoded) noexcept nogil:
    free(c.message)
    c.message = <uint8_t*>malloc(n + 1)
    c.message_len = 0
    if c.message != NULL:
        memcpy(c.message, text, n)
        c.message[n] = 0
        c.message_len = n
    c.message_encoded = encoded


cdef void fail(Client* cl, Call* c, int status, const char* text) noexcept nogil:
    """Finish the call with a status the client decided (not the server's)."""
    c.grpc_status = status
    c.local = True
    set_message(c, text, strlen(text), False)
    free(c.reply)
    c.reply = NULL
    c.reply_len = 0
    finish(cl, c)


cdef void settle(Client* cl, Call* c, uint32_t error_code) noexcept nogil:
    """The stream closed: decide the call's status from what arrived, as grpc-core does."""
    cdef char text[160]
    cdef HConn* conn = c.conn
    if c.http_status != 0 and c.http_status != 200:
        snprintf(text, sizeof(text), "Received http2 header with status: %d", c.http_status)
        fail(cl, c, grpc_code_of_http(c.http_status), text)
    elif c.grpc_status >= 0:
        if c.grpc_status == GRPC_OK and (c.messages != 1 or c.prefix_got or c.message_left):
            snprintf(text, sizeof(text), "the server answered OK with %u complete reply messages; a unary call "
                     "takes exactly one", <unsigned int>(c.messages - (1 if (c.prefix_got or c.message_left) else 0)))
            fail(cl, c, GRPC_INTERNAL, text)
        else:
            if c.grpc_status != GRPC_OK:
                free(c.reply)
                c.reply = NULL
                c.reply_len = 0
            finish(cl, c)
    elif error_code == NGHTTP2_REFUSED_STREAM and conn != NULL and conn.goaway:
        fail(cl, c, GRPC_UNAVAILABLE, "the server is going away (GOAWAY) and did not take the call")
    elif error_code == NGHTTP2_REFUSED_STREAM and c.http_status == 0 and c.refusals < MAX_REFUSALS:
        # The server did not process it (RFC 9113 8.7): sent again, as grpc-core retries it
        # transparently. grpc-core servers count a stream a moment after its trailers went out,
        # so a client that keeps to MAX_CONCURRENT_STREAMS still meets this now and then.
        c.refusals += 1
        cl.refused += 1
        detach(cl, c)
        reset_answer(c)
        c.retrying = True
        c.next = cl.retry_head
        cl.retry_head = c
    elif error_code != NGHTTP2_NO_ERROR:
        snprintf(text, sizeof(text), "stream reset by the server (HTTP/2 error code %u: %s)", error_code,
                 nghttp2_http2_strerror(error_code))
        fail(cl, c, grpc_code_of_reset(error_code), text)
    else:
        fail(cl, c, GRPC_UNKNOWN, "the server's answer had no grpc-status")


cdef void reset_answer(Call* c) noexcept nogil:
    """Forget a refused stream's partial answer and request progress, for sending the call again."""
    c.stream_id = 0
    c.body_off = 0
    c.http_status = 0
    c.grpc_status = -1
    free(c.message)
    c.message = NULL
    c.message_len = 0
    c.trailers_len = 0
    c.prefix_got = 0
    c.message_left = 0
    c.messages = 0
    free(c.reply)
    c.reply = NULL
    c.reply_len = 0


cdef void add_trailer(Call* c, const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen) noexcept nogil:
    cdef size_t need = c.trailers_len + 8 + namelen + valuelen
    cdef size_t cap
    cdef uint8_t* grown
    cdef uint32_t n
    if need > c.trailers_cap:
        cap = c.trailers_cap * 2 if c.trailers_cap else 256
        while cap < need:
            cap *= 2
        grown = <uint8_t*>realloc(c.trailers, cap)
        if grown == NULL:
            return
        c.trailers = grown
        c.trailers_cap = cap
    n = <uint32_t>namelen
    memcpy(c.trailers + c.trailers_len, &n, 4)
    memcpy(c.trailers + c.trailers_len + 4, name, namelen)
    c.trailers_len += 4 + namelen
    n = <uint32_t>valuelen
    memcpy(c.trailers + c.trailers_len, &n, 4)
    memcpy(c.trailers + c.trailers_len + 4, value, valuelen)
    c.trailers_len += 4 + valuelen


# ---------------------------------------------------------------------------------------------
# nghttp2 callbacks (user_data: the HConn; a stream's user data: its Call, NULL once detached)

cdef ssize_t read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                       uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept nogil:
    """The request's data provider: the framed message, then END_STREAM."""
    cdef Call* c = <Call*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef size_t n
    if c == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE     # the call was detached: the stream is being reset
    n = c.body_len - c.body_off
    if n > length:
        n = length
    memcpy(buf, c.body + c.body_off, n)
    c.body_off += n
    if c.body_off == c.body_len:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
    return <ssize_t>n


cdef int on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                   const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept nogil:
    cdef Call* c
    cdef size_t i
    cdef int status
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    c = <Call*>nghttp2_session_get_stream_user_data(session, frame.hd.stream_id)
    if c == NULL:
        return 0
    if namelen == 7 and memcmp(name, b":status", 7) == 0:
        status = 0
        for i in range(valuelen):
            if value[i] < 0x30 or value[i] > 0x39 or i >= 3:
                status = 999
                break
            status = status * 10 + (value[i] - 0x30)
        c.http_status = status
        return 0
    if not (frame.hd.flags & NGHTTP2_FLAG_END_STREAM):
        return 0                # initial metadata: not kept
    if namelen == 11 and memcmp(name, b"grpc-status", 11) == 0:
        status = 0
        for i in range(valuelen):
            if value[i] < 0x30 or value[i] > 0x39 or i >= 4:
                status = GRPC_UNKNOWN
                break
            status = status * 10 + (value[i] - 0x30)
        if valuelen == 0:
            status = GRPC_UNKNOWN
        c.grpc_status = status
    elif namelen == 12 and memcmp(name, b"grpc-message", 12) == 0:
        set_message(c, <const char*>value, valuelen, True)
    elif namelen > 0 and name[0] != 0x3a and not (namelen == 12 and memcmp(name, b"content-type", 12) == 0):
        add_trailer(c, name, namelen, value, valuelen)
    return 0


cdef int on_data_chunk_recv(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                            size_t length, void* user_data) noexcept nogil:
    """Follow the reply's gRPC framing (1 flag byte, 4 length bytes, message), keeping the message."""
    cdef Call* c = <Call*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef HConn* conn = <HConn*>user_data
    cdef Client* cl = conn.client
    cdef size_t i = 0, take
    cdef uint64_t size
    cdef char text[160]
    if c == NULL:
        return 0
    while i < length:
        if c.message_left == 0:
            c.prefix[c.prefix_got] = data[i]
            c.prefix_got += 1
            i += 1
            if c.prefix_got < 5:
                continue
            c.prefix_got = 0
            size = (<uint64_t>c.prefix[1] << 24) | (<uint64_t>c.prefix[2] << 16) | \
                   (<uint64_t>c.prefix[3] << 8) | c.prefix[4]
            c.messages += 1
            if c.prefix[0] & 1:
                reset_stream(c, NGHTTP2_CANCEL)
                fail(cl, c, GRPC_INTERNAL, "compressed message not supported")
                return 0
            if c.messages > 1:
                reset_stream(c, NGHTTP2_CANCEL)
                fail(cl, c, GRPC_INTERNAL, "the server sent more than one reply message on a unary call")
                return 0
            if size > cl.max_message:
                snprintf(text, sizeof(text), "reply message of %llu bytes is larger than the limit of %llu bytes",
                         <unsigned long long>size, <unsigned long long>cl.max_message)
                reset_stream(c, NGHTTP2_CANCEL)
                fail(cl, c, GRPC_RESOURCE_EXHAUSTED, text)
                return 0
            c.reply = <uint8_t*>malloc(size if size else 1)
            if c.reply == NULL:
                reset_stream(c, NGHTTP2_CANCEL)
                fail(cl, c, GRPC_RESOURCE_EXHAUSTED, "out of memory for the reply message")
                return 0
            c.reply_cap = size
            c.reply_len = 0
            c.message_left = size
            continue
        take = length - i
        if take > c.message_left:
            take = <size_t>c.message_left
        memcpy(c.reply + c.reply_len, data + i, take)
        c.reply_len += take
        c.message_left -= take
        i += take
    return 0


cdef int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef HConn* conn = <HConn*>user_data
    if frame.hd.type == NGHTTP2_GOAWAY:
        # nghttp2 closes the streams above last_stream_id (REFUSED_STREAM); the rest may finish
        conn.goaway = True
    return 0


cdef int on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                         void* user_data) noexcept nogil:
    cdef Call* c = <Call*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef HConn* conn = <HConn*>user_data
    if c != NULL:
        settle(conn.client, c, error_code)
    if conn.retiring:
        mark_dirty(conn.client, conn)
    return 0


# ---------------------------------------------------------------------------------------------
# connections

cdef HConn* conn_open(Client* cl, const uint8_t* addr, size_t addr_len, char* err, size_t errcap) noexcept nogil:
    """A new connection to "host:port" (connect in progress), or NULL with the reason in `err`."""
    cdef char host[MAX_ADDRESS + 1]
    cdef char port[16]
    cdef size_t colon = addr_len, hstart = 0, hend
    cdef addrinfo hints
    cdef addrinfo* found = NULL
    cdef int rc, fd, one = 1
    cdef HConn* conn
    cdef nghttp2_settings_entry settings[3]
    cdef epoll_event ev
    cdef bint connecting
    while colon > 0 and addr[colon - 1] != 0x3a:
        colon -= 1
    if colon == 0 or addr_len - colon == 0 or addr_len - colon >= sizeof(port) or addr_len > MAX_ADDRESS:
        snprintf(err, errcap, "not a host:port address: %.*s", <int>addr_len, addr)
        return NULL
    hend = colon - 1
    if hend >= 2 and addr[0] == 0x5b and addr[hend - 1] == 0x5d:     # [v6 address]
        hstart = 1
        hend -= 1
    memcpy(host, addr + hstart, hend - hstart)
    host[hend - hstart] = 0
    memcpy(port, addr + colon, addr_len - colon)
    port[addr_len - colon] = 0
    memset_addrinfo(&hints)
    hints.ai_socktype = SOCK_STREAM
    rc = getaddrinfo(host, port, &hints, &found)
    if rc != 0 or found == NULL:
        snprintf(err, errcap, "cannot resolve %.*s: %s", <int>addr_len, addr, gai_strerror(rc))
        return NULL
    fd = socket(found.ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        snprintf(err, errcap, "cannot connect to %.*s: %s", <int>addr_len, addr, strerror(errno))
        freeaddrinfo(found)
        return NULL
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    rc = connect(fd, found.ai_addr, found.ai_addrlen)
    freeaddrinfo(found)
    connecting = rc != 0 and errno == EINPROGRESS
    if rc != 0 and not connecting:
        snprintf(err, errcap, "cannot connect to %.*s: %s", <int>addr_len, addr, strerror(errno))
        close(fd)
        return NULL
    conn = <HConn*>calloc(1, sizeof(HConn))
    if conn == NULL:
        snprintf(err, errcap, "out of memory")
        close(fd)
        return NULL
    conn.fd = fd
    conn.client = cl
    memcpy(conn.addr, addr, addr_len)
    conn.addr_len = addr_len
    conn.connecting = connecting
    if nghttp2_session_client_new2(&conn.session, cl.callbacks, conn, cl.option) != 0:
        snprintf(err, errcap, "out of memory")
        free(conn)
        close(fd)
        return NULL
    settings[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
    settings[0].value = 0
    settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    settings[1].value = STREAM_WINDOW
    settings[2].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
    settings[2].value = MAX_FRAME
    nghttp2_submit_settings(conn.session, NGHTTP2_FLAG_NONE, settings, 3)
    nghttp2_session_set_local_window_size(conn.session, NGHTTP2_FLAG_NONE, 0, CONNECTION_WINDOW)
    ev.events = EPOLLIN | EPOLLOUT if connecting else EPOLLIN
    ev.data.ptr = conn
    if epoll_ctl(cl.epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0:
        snprintf(err, errcap, "epoll_ctl: %s", strerror(errno))
        nghttp2_session_del(conn.session)
        free(conn)
        close(fd)
        return NULL
    conn.next = cl.conns
    if cl.conns != NULL:
        cl.conns.prev = conn
    cl.conns = conn
    cl.connections += 1
    cl.open_conns += 1
    mark_dirty(cl, conn)
    return conn


cdef void memset_addrinfo(addrinfo* hints) noexcept nogil:
    hints.ai_flags = 0
    hints.ai_family = 0             # AF_UNSPEC
    hints.ai_socktype = 0
    hints.ai_protocol = 0
    hints.ai_addrlen = 0
    hints.ai_addr = NULL
    hints.ai_canonname = NULL
    hints.ai_next = NULL


cdef void conn_die(HConn* conn, const char* fmt, const char* detail) noexcept nogil:
    """Mark the connection broken; its calls get UNAVAILABLE with this reason when it is freed."""
    cdef char text[200]
    if conn.dead:
        return
    conn.dead = True
    snprintf(text, sizeof(text), fmt, detail)
    snprintf(conn.error, sizeof(conn.error), "%s %.*s: %s", "connection to" if not conn.connecting else
             "cannot connect to", <int>conn.addr_len, conn.addr, text)
    mark_dirty(conn.client, conn)


cdef void conn_connected(Client* cl, HConn* conn) noexcept nogil:
    """The non-blocking connect finished: either way, say so."""
    cdef int err = 0
    cdef socklen_t n = sizeof(err)
    cdef epoll_event ev
    if getsockopt(conn.fd, SOL_SOCKET, SO_ERROR, &err, &n) != 0:
        err = errno
    if err != 0:
        conn_die(conn, "%s", strerror(err))
        return
    conn.connecting = False
    conn.want_out = False
    ev.events = EPOLLIN
    ev.data.ptr = conn
    epoll_ctl(cl.epoll_fd, EPOLL_CTL_MOD, conn.fd, &ev)
    mark_dirty(cl, conn)


cdef void conn_read(Client* cl, HConn* conn) noexcept nogil:
    cdef ssize_t n
    while True:
        n = recv(conn.fd, cl.rbuf, cl.rbuf_size, 0)
        if n > 0:
            n = nghttp2_session_mem_recv(conn.session, cl.rbuf, <size_t>n)
            if n < 0:
                conn_die(conn, "HTTP/2 error: %s", nghttp2_strerror(<int>n))
                return
            mark_dirty(cl, conn)
            if <size_t>n < cl.rbuf_size:
                return
        elif n == 0:
            conn_die(conn, "%s", "the server closed the connection")
            return
        elif errno == EINTR:
            continue
        else:
            if errno != EAGAIN:
                conn_die(conn, "%s", strerror(errno))
            return


cdef bint conn_flush(Client* cl, HConn* conn) noexcept nogil:
    """Write what nghttp2 has for this connection in as few send() calls as the socket allows.

    False when the connection is finished (closed by either side, or broken); the caller frees it.
    """
    cdef ssize_t session_error = 0
    cdef int outcome
    cdef epoll_event ev
    if conn.dead:
        return False
    if conn.connecting:
        return True             # the bytes wait in the session until the connect finishes
    if conn.retiring and conn.calls == NULL and not conn.terminated:
        nghttp2_session_terminate_session(conn.session, NGHTTP2_NO_ERROR)
        conn.terminated = True
    outcome = write_session(conn.session, &conn.out, conn.fd, SEND_HIGH_WATER, &session_error)
    if outcome == WRITE_SESSION_ERROR:
        conn_die(conn, "HTTP/2 error: %s", nghttp2_strerror(<int>session_error))
        return False
    if outcome == WRITE_NO_MEMORY:
        conn_die(conn, "%s", "out of memory")
        return False
    if outcome == WRITE_SOCKET_ERROR:
        conn_die(conn, "%s", strerror(errno))
        return False
    if write_pending(&conn.out) != conn.want_out:
        conn.want_out = write_pending(&conn.out)
        ev.events = EPOLLIN | EPOLLOUT if conn.want_out else EPOLLIN
        ev.data.ptr = conn
        epoll_ctl(cl.epoll_fd, EPOLL_CTL_MOD, conn.fd, &ev)
    if not write_pending(&conn.out) and not nghttp2_session_want_read(conn.session) \
            and not nghttp2_session_want_write(conn.session):
        snprintf(conn.error, sizeof(conn.error), "the connection to %.*s closed", <int>conn.addr_len, conn.addr)
        return False
    return True


cdef void conn_free(Client* cl, HConn* conn, int status) noexcept nogil:
    """Close the socket; every call still on it finishes with `status` and the connection's error."""
    cdef const char* why = conn.error
    if conn.error[0] == 0:
        snprintf(conn.error, sizeof(conn.error), "the connection to %.*s closed", <int>conn.addr_len, conn.addr)
    conn.dirty = True           # failing its calls must not put it back on the dirty list
    close(conn.fd)
    while conn.calls != NULL:
        fail(cl, conn.calls, status, why)
    # nghttp2_session_del calls no on_stream_close: every call was detached above
    nghttp2_session_del(conn.session)
    if conn.prev != NULL:
        conn.prev.next = conn.next
    else:
        cl.conns = conn.next
    if conn.next != NULL:
        conn.next.prev = conn.prev
    free(conn.out.data)
    free(conn)
    cl.open_conns -= 1


cdef void flush_dirty(Client* cl) noexcept nogil:
    cdef int i = 0
    cdef HConn* conn
    # freeing a connection fails its calls, which can mark other connections dirty: hence a while
    while i < cl.n_dirty:
        conn = cl.dirty[i]
        # still marked while it flushes (and for good once freed): nothing re-adds it to the list
        if conn_flush(cl, conn):
            conn.dirty = False
        else:
            conn_free(cl, conn, GRPC_UNAVAILABLE)
        i += 1
    cl.n_dirty = 0


# ---------------------------------------------------------------------------------------------
# the loop

cdef HConn* conn_for(Client* cl, const uint8_t* addr, size_t addr_len, char* err, size_t errcap) noexcept nogil:
    """The usable connection to `addr`, opened now if there is none.

    A linear scan of the connections: one per model-server address, a few dozen at most.
    """
    cdef HConn* conn = cl.conns
    while conn != NULL:
        if conn.addr_len == addr_len and not (conn.dead or conn.goaway or conn.retiring) \
                and memcmp(conn.addr, addr, addr_len) == 0:
            return conn
        conn = conn.next
    return conn_open(cl, addr, addr_len, err, errcap)


cdef void start_call(Client* cl, Call* c, int64_t now) noexcept nogil:
    cdef char err[256]
    cdef HConn* conn
    cdef int32_t stream_id
    cdef nghttp2_data_provider provider
    cdef int attempt
    c.state = CALL_ACTIVE
    if c.deadline_ns <= now:
        fail(cl, c, GRPC_DEADLINE_EXCEEDED, "Deadline Exceeded")
        return
    if not heap_push(cl, c):
        fail(cl, c, GRPC_RESOURCE_EXHAUSTED, "out of memory")
        return
    provider.source.ptr = NULL
    provider.read_callback = read_body
    for attempt in range(2):
        conn = conn_for(cl, c.addr, c.addr_len, err, sizeof(err))
        if conn == NULL:
            fail(cl, c, GRPC_UNAVAILABLE, err)
            return
        stream_id = nghttp2_submit_request(conn.session, NULL, c.nva, c.nvlen, &provider, c)
        if stream_id > 0:
            break
        # stream ids spent, or the session is going away: no new calls on it, try a fresh one
        conn.goaway = True
        mark_dirty(cl, conn)
    if stream_id <= 0:
        fail(cl, c, GRPC_UNAVAILABLE, nghttp2_strerror(stream_id))
        return
    c.stream_id = stream_id
    c.conn = conn
    c.prev = NULL
    c.conn_next = conn.calls
    if conn.calls != NULL:
        conn.calls.prev = c
    conn.calls = c
    conn.n_calls += 1
    mark_dirty(cl, conn)


cdef void cancel_call(Client* cl, Call* target) noexcept nogil:
    """The loop's half of cancel(): reset the stream and free the call, or leave it to publish()."""
    target.cancel_seen = True
    if target.retrying:
        return                      # run_retries() frees it
    if target.state == CALL_ACTIVE:
        reset_stream(target, NGHTTP2_CANCEL)
        detach(cl, target)
        call_free(target)
    elif target.state == CALL_DROPPED:
        call_free(target)
    # CALL_FINISHED: publish() sees it cancelled and frees it


cdef void close_address(Client* cl, Call* op) noexcept nogil:
    cdef HConn* conn = cl.conns
    while conn != NULL:
        if conn.addr_len == op.addr_len and memcmp(conn.addr, op.addr, op.addr_len) == 0 and not conn.retiring:
            conn.retiring = True
            mark_dirty(cl, conn)
        conn = conn.next


cdef Call* take_submissions(Client* cl, bint final) noexcept nogil:
    cdef Call* ops
    pthread_mutex_lock(&cl.lock)
    ops = cl.sub_head
    cl.sub_head = cl.sub_tail = NULL
    cl.sub_signalled = False
    if final:
        cl.closed = True
    pthread_mutex_unlock(&cl.lock)
    return ops


cdef void run_ops(Client* cl, Call* ops, bint stopping) noexcept nogil:
    cdef Call* op
    cdef int64_t now = now_ns()
    while ops != NULL:
        op = ops
        ops = ops.next
        op.next = NULL
        if op.kind == OP_CALL:
            if stopping:
                op.state = CALL_ACTIVE
                fail(cl, op, GRPC_CANCELLED, "the client was stopped")
            else:
                start_call(cl, op, now)
        elif op.kind == OP_CANCEL:
            cancel_call(cl, op.target)
            call_free(op)
        else:
            if not stopping:
                close_address(cl, op)
            call_free(op)


cdef void run_retries(Client* cl) noexcept nogil:
    cdef Call* c = cl.retry_head
    cdef Call* nxt
    cdef int64_t now
    if c == NULL:
        return
    cl.retry_head = NULL
    now = now_ns()
    while c != NULL:
        nxt = c.next
        c.next = NULL
        c.retrying = False
        if c.cancel_seen:
            call_free(c)            # cancelled while it waited here
        else:
            start_call(cl, c, now)
        c = nxt


cdef void expire(Client* cl) noexcept nogil:
    cdef int64_t now
    cdef Call* c
    if cl.heap_len == 0:
        return
    now = now_ns()
    while cl.heap_len > 0 and cl.heap[0].deadline_ns <= now:
        c = cl.heap[0]
        reset_stream(c, NGHTTP2_CANCEL)
        fail(cl, c, GRPC_DEADLINE_EXCEEDED, "Deadline Exceeded")


cdef int next_timeout_ms(Client* cl) noexcept nogil:
    cdef int64_t left
    if cl.heap_len == 0:
        return -1
    left = cl.heap[0].deadline_ns - now_ns()
    if left <= 0:
        return 0
    left = (left + 999999) // 1000000
    return <int>left if left < 1000000000 else 1000000000


cdef void publish(Client* cl) noexcept nogil:
    """Hand this turn's finished calls to take(); write notify_fd if the queue was empty."""
    cdef Call* c = cl.fin_head
    cdef Call* nxt
    cdef Call* drop = NULL
    cdef bint was_empty
    cdef bint added = False
    cdef uint64_t one = 1
    if c == NULL:
        return
    cl.fin_head = cl.fin_tail = NULL
    pthread_mutex_lock(&cl.lock)
    was_empty = cl.done_head == NULL
    while c != NULL:
        nxt = c.next
        c.next = NULL
        if c.cancelled:
            if c.cancel_seen:
                c.next = drop
                drop = c
            else:
                c.state = CALL_DROPPED     # its cancel op, still queued, frees it
        else:
            c.state = CALL_DONE
            if cl.done_tail != NULL:
                cl.done_tail.next = c
            else:
                cl.done_head = c
            cl.done_tail = c
            cl.completed += 1
            if c.grpc_status != GRPC_OK:
                cl.errors += 1
            added = True
        c = nxt
    pthread_mutex_unlock(&cl.lock)
    if was_empty and added and not cl.inline:
        write(cl.notify_fd, &one, sizeof(one))
        cl.notifies += 1
    while drop != NULL:
        nxt = drop.next
        call_free(drop)
        drop = nxt


cdef void shutdown_all(Client* cl) noexcept nogil:
    """Stop: calls not yet sent and calls in flight finish CANCELLED; GOAWAY to every connection."""
    cdef HConn* conn
    cdef HConn* nxt
    cdef Call* c
    cdef Call* nxt_call
    run_ops(cl, take_submissions(cl, True), True)
    c = cl.retry_head
    cl.retry_head = NULL
    while c != NULL:
        nxt_call = c.next
        c.next = NULL
        c.retrying = False
        if c.cancel_seen:
            call_free(c)
        else:
            fail(cl, c, GRPC_CANCELLED, "the client was stopped")
        c = nxt_call
    conn = cl.conns
    while conn != NULL:
        nxt = conn.next
        c = conn.calls
        while c != NULL:
            reset_stream(c, NGHTTP2_CANCEL)
            c = c.conn_next
        if not conn.dead:
            nghttp2_session_terminate_session(conn.session, NGHTTP2_NO_ERROR)
            conn_flush(cl, conn)
        snprintf(conn.error, sizeof(conn.error), "the client was stopped")
        conn_free(cl, conn, GRPC_CANCELLED)
        conn = nxt
    cl.n_dirty = 0
    while cl.heap_len > 0:          # calls on no connection (none expected), for completeness
        fail(cl, cl.heap[0], GRPC_CANCELLED, "the client was stopped")
    publish(cl)


cdef int run_turn(Client* cl, int timeout_ms) noexcept nogil:
    """One turn of the loop: wait up to `timeout_ms` for events, read, take what was handed in,
    expire deadlines, write, publish. 1 when stop() was asked for, -1 when epoll_wait failed."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef void* tag
    cdef HConn* conn
    cdef uint64_t counter
    cdef bint woken = cl.inline     # inline: whoever runs the turn may have queued calls just now
    cdef bint stopping
    if timeout_ms < -1:
        n = 0                       # inline, only to send what was handed in: no events to wait for
    else:
        n = epoll_wait(cl.epoll_fd, events, MAX_EVENTS, timeout_ms)
        if n < 0:
            return 0 if errno == EINTR else -1
    for i in range(n):
        tag = events[i].data.ptr
        if tag == &cl.wake_fd:
            read(cl.wake_fd, &counter, sizeof(counter))     # reset before taking the queue
            woken = True
            cl.wakeups += 1
        elif tag == &cl.timer_fd:
            read(cl.timer_fd, &counter, sizeof(counter))
            cl.timer_armed_ns = 0
        else:
            conn = <HConn*>tag
            if conn.connecting:
                conn_connected(cl, conn)
                if not conn.dead and events[i].events & EPOLLIN:
                    conn_read(cl, conn)
                continue
            if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                conn_read(cl, conn)
            if events[i].events & EPOLLOUT:
                mark_dirty(cl, conn)
    run_retries(cl)                 # refused while reading
    if woken:
        pthread_mutex_lock(&cl.lock)
        stopping = cl.stopping
        pthread_mutex_unlock(&cl.lock)
        if stopping:
            return 1
        run_ops(cl, take_submissions(cl, False), False)
    expire(cl)
    flush_dirty(cl)
    while cl.retry_head != NULL:    # refused while writing (ends: a call is sent again MAX_REFUSALS times at most)
        run_retries(cl)
        flush_dirty(cl)
    publish(cl)
    if cl.inline:
        arm_timer(cl)
    return 0


cdef void arm_timer(Client* cl) noexcept nogil:
    """Inline: the timerfd fires by the nearest deadline (`_h2io.arm_timer_at`)."""
    if cl.heap_len != 0:
        arm_timer_at(cl.timer_fd, &cl.timer_armed_ns, cl.heap[0].deadline_ns)


cdef int run_loop(Client* cl) noexcept nogil:
    """Serve calls until stop(); 0 when stopped, -1 when epoll_wait failed (calls then finish too)."""
    cdef int rc = 0
    while rc == 0:
        rc = run_turn(cl, next_timeout_ms(cl))
    shutdown_all(cl)
    return 0 if rc == 1 else rc


# ---------------------------------------------------------------------------------------------
# the submission queue (any thread)

cdef inline void append_locked(Client* cl, Call* op) noexcept nogil:
    op.next = NULL
    if cl.sub_tail != NULL:
        cl.sub_tail.next = op
    else:
        cl.sub_head = op
    cl.sub_tail = op


cdef bint enqueue(Client* cl, Call* op, bint wake) noexcept nogil:
    """Queue a call or a close for the loop; False when the client is stopping (not queued).

    With `wake`, write wake_fd unless it was written since the loop last took the queue.
    """
    cdef bint signal = False
    cdef uint64_t one = 1
    pthread_mutex_lock(&cl.lock)
    if cl.closed or cl.stopping:
        pthread_mutex_unlock(&cl.lock)
        return False
    append_locked(cl, op)
    if op.kind == OP_CALL:
        cl.calls += 1
    if wake and not cl.sub_signalled:
        cl.sub_signalled = True
        signal = True
    pthread_mutex_unlock(&cl.lock)
    if signal:
        write(cl.wake_fd, &one, sizeof(one))
    return True


# ---------------------------------------------------------------------------------------------
# the Python API

cdef class H2Client:
    """A unary gRPC client on libnghttp2 client sessions and one epoll loop with the GIL released.

    ``start()`` runs the loop on a thread of its own; ``call()`` hands a call in (any thread, cheap,
    no wake-up unless the loop has nothing queued), ``take()`` hands every finished call out when
    ``notify_fd`` is readable. ``stop()`` finishes calls in flight with CANCELLED and joins.
    """

    cdef Client* cl
    cdef uint64_t next_id
    cdef dict live          # call id -> Call* (as int), until take() delivers or cancel() drops it
    cdef object thread
    cdef bint started

    def __cinit__(self):
        self.cl = <Client*>calloc(1, sizeof(Client))
        if self.cl == NULL:
            raise MemoryError()
        self.cl.epoll_fd = self.cl.wake_fd = self.cl.notify_fd = self.cl.timer_fd = -1
        pthread_mutex_init(&self.cl.lock, NULL)

    def __init__(self, *, max_message_bytes=MAX_MESSAGE_BYTES):
        cdef Client* cl = self.cl
        cdef epoll_event ev
        if not 0 <= max_message_bytes <= 0xFFFFFFFF:
            raise ValueError("max_message_bytes must be in [0, 2**32)")
        cl.max_message = max_message_bytes
        cl.rbuf_size = READ_BUFFER_BYTES
        cl.rbuf = <uint8_t*>malloc(cl.rbuf_size)
        cl.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
        cl.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        cl.notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        cl.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if cl.rbuf == NULL or cl.epoll_fd < 0 or cl.wake_fd < 0 or cl.notify_fd < 0 or cl.timer_fd < 0:
            raise OSError(errno, "cannot set up the epoll loop")
        ev.events = EPOLLIN
        ev.data.ptr = &cl.wake_fd
        if epoll_ctl(cl.epoll_fd, EPOLL_CTL_ADD, cl.wake_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        ev.data.ptr = &cl.timer_fd
        if epoll_ctl(cl.epoll_fd, EPOLL_CTL_ADD, cl.timer_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        if nghttp2_session_callbacks_new(&cl.callbacks) != 0 or nghttp2_option_new(&cl.option) != 0:
            raise MemoryError()
        nghttp2_option_set_no_closed_streams(cl.option, 1)
        nghttp2_session_callbacks_set_on_header_callback(cl.callbacks, on_header)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cl.callbacks, on_data_chunk_recv)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cl.callbacks, on_frame_recv)
        nghttp2_session_callbacks_set_on_stream_close_callback(cl.callbacks, on_stream_close)
        self.next_id = 1
        self.live = {}

    def __dealloc__(self):
        cdef Client* cl = self.cl
        cdef Call* c
        cdef Call* nxt
        if cl == NULL:
            return
        # never started, or stopped: no loop runs; free whatever is left
        while cl.conns != NULL:
            conn_free(cl, cl.conns, GRPC_CANCELLED)
        for head in (0, 1, 2):
            c = cl.sub_head if head == 0 else (cl.done_head if head == 1 else cl.fin_head)
            while c != NULL:
                nxt = c.next
                if c.kind != OP_CANCEL:
                    call_free(c)
                else:
                    free(c)
                c = nxt
        for fd in (cl.epoll_fd, cl.wake_fd, cl.notify_fd, cl.timer_fd):
            if fd >= 0:
                close(fd)
        free(cl.heap)
        free(cl.dirty)
        free(cl.rbuf)
        if cl.callbacks != NULL:
            nghttp2_session_callbacks_del(cl.callbacks)
        if cl.option != NULL:
            nghttp2_option_del(cl.option)
        pthread_mutex_destroy(&cl.lock)
        free(cl)
        self.cl = NULL

    def start(self):
        """Run the loop on a new thread (named ``h2-client``). Once; not with ``poll()``."""
        if self.started or self.cl.inline:
            raise RuntimeError("start runs once, and not on a client driven by poll()")
        self.started = True
        self.thread = threading.Thread(target=self._run, name="h2-client", daemon=True)
        self.thread.start()

    def _run(self):
        cdef int rc
        with nogil:
            rc = run_loop(self.cl)
        if rc != 0:
            raise OSError(errno, "epoll_wait failed")

    def stop(self, timeout=None):
        """Stop the loop and join it: calls in flight or queued finish with CANCELLED ("the client
        was stopped"), each connection gets GOAWAY. Calls after this raise RuntimeError; ``take()``
        still hands out what finished. Safe to call more than once, and before ``start()``."""
        cdef uint64_t one = 1
        cdef bint was_stopping
        with nogil:
            pthread_mutex_lock(&self.cl.lock)
            was_stopping = self.cl.stopping
            self.cl.stopping = True
            pthread_mutex_unlock(&self.cl.lock)
        if not self.started:
            if not was_stopping:
                with nogil:
                    shutdown_all(self.cl)
            return
        write(self.cl.wake_fd, &one, sizeof(one))
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def call(self, str address, bytes path, message, double timeout_s, tuple metadata=(), *, bint wake=True):
        """Send a unary call to ``address`` ("host:port") and return its id (never reused).

        ``message`` (bytes-like) is copied and framed; ``timeout_s`` becomes the call's deadline,
        enforced here and sent as grpc-timeout. ``metadata``: (name, value) pairs, str or bytes;
        names are lower-cased, values of ``-bin`` names are base64-encoded. The answer comes
        back from ``take()``.

        The loop is woken (one eventfd write) only if it has not been since it last took the
        queue: one wake-up per burst. ``wake=False`` leaves even that to a later ``wake()``, so a
        caller that submits many calls in one turn of its own loop wakes this one once.
        """
        cdef Client* cl = self.cl
        cdef bytes addr = address.encode()
        cdef const uint8_t[::1] body_view = message
        cdef size_t body_len = body_view.shape[0]
        cdef list pairs = []
        cdef size_t strings = 0, nvlen, off
        cdef Call* c
        cdef uint8_t* p
        cdef char timeout_text[16]
        cdef size_t timeout_len
        cdef int64_t timeout_ns
        cdef bint refused
        cdef size_t i
        cdef bytes name, value
        if len(addr) == 0 or len(addr) > MAX_ADDRESS:
            raise ValueError(f"not a host:port address: {address!r}")
        if body_len > 0xFFFFFFFF:
            raise ValueError("message too large for one gRPC message")
        for key, val in metadata:
            name = (key.encode() if isinstance(key, str) else bytes(key)).lower()
            value = val.encode() if isinstance(val, str) else bytes(val)
            if name.endswith(b"-bin"):
                value = base64.b64encode(value).rstrip(b"=")
            pairs.append(name)
            pairs.append(value)
            strings += len(name) + len(value)
        if timeout_s != timeout_s:
            raise ValueError("timeout_s is NaN")
        timeout_ns = <int64_t>(timeout_s * 1e9) if timeout_s < 3e9 else <int64_t>3000000000 * 1000000000
        timeout_len = format_timeout(timeout_ns, timeout_text, sizeof(timeout_text))
        nvlen = N_FIXED_HEADERS + len(pairs) // 2
        c = <Call*>calloc(1, sizeof(Call))
        if c == NULL:
            raise MemoryError()
        c.kind = OP_CALL
        c.heap_index = SIZE_MAX
        c.grpc_status = -1
        c.block = <uint8_t*>malloc(nvlen * sizeof(nghttp2_nv) + len(addr) + len(path) + timeout_len + strings + 1)
        c.body = <uint8_t*>malloc(body_len + 5)
        if c.block == NULL or c.body == NULL:
            call_free(c)
            raise MemoryError()
        c.nva = <nghttp2_nv*>c.block
        c.nvlen = nvlen
        p = c.block + nvlen * sizeof(nghttp2_nv)
        memcpy(p, <const char*>addr, len(addr))
        c.addr = p
        c.addr_len = len(addr)
        p += len(addr)
        set_nv(&c.nva[0], H_METHOD, 7, H_POST, 4, NO_COPY)
        set_nv(&c.nva[1], H_SCHEME, 7, H_HTTP, 4, NO_COPY)
        memcpy(p, <const char*>path, len(path))
        set_nv(&c.nva[2], H_PATH, 5, p, len(path), NGHTTP2_NV_FLAG_NO_COPY_NAME)
        p += len(path)
        set_nv(&c.nva[3], H_AUTHORITY, 10, c.addr, c.addr_len, NGHTTP2_NV_FLAG_NO_COPY_NAME)
        set_nv(&c.nva[4], H_CONTENT_TYPE, 12, H_GRPC, 16, NO_COPY)
        set_nv(&c.nva[5], H_TE, 2, H_TRAILERS, 8, NO_COPY)
        memcpy(p, timeout_text, timeout_len)
        set_nv(&c.nva[6], H_TIMEOUT, 12, p, timeout_len, NGHTTP2_NV_FLAG_NO_COPY_NAME)
        p += timeout_len
        for i in range(0, len(pairs), 2):
            name = pairs[i]
            value = pairs[i + 1]
            memcpy(p, <const char*>name, len(name))
            memcpy(p + len(name), <const char*>value, len(value))
            set_nv(&c.nva[N_FIXED_HEADERS + i // 2], <const char*>p, len(name), p + len(name), len(value),
                   NGHTTP2_NV_FLAG_NONE)
            p += len(name) + len(value)
        c.body[0] = 0
        c.body[1] = (body_len >> 24) & 0xFF
        c.body[2] = (body_len >> 16) & 0xFF
        c.body[3] = (body_len >> 8) & 0xFF
        c.body[4] = body_len & 0xFF
        if body_len:
            memcpy(c.body + 5, &body_view[0], body_len)
        c.body_len = body_len + 5
        c.deadline_ns = now_ns() + timeout_ns
        c.id = self.next_id
        self.next_id += 1
        # known to cancel() before the loop can finish it (take() may run on another thread)
        self.live[c.id] = <size_t>c
        with nogil:
            refused = not enqueue(cl, c, wake)
        if refused:
            del self.live[c.id]
            call_free(c)
            raise RuntimeError("the client is stopped")
        return c.id

    def cancel(self, uint64_t call_id):
        """Cancel a call not yet taken: its stream is reset (RST_STREAM CANCEL) and it is never
        delivered by ``take()``. False when the id is unknown or already taken."""
        cdef Client* cl = self.cl
        cdef object found = self.live.pop(call_id, None)
        cdef Call* c
        cdef Call* op
        cdef bint signal = False
        cdef uint64_t one = 1
        if found is None:
            return False
        c = <Call*><size_t>found
        op = <Call*>calloc(1, sizeof(Call))
        if op == NULL:
            raise MemoryError()
        op.kind = OP_CANCEL
        op.target = c
        op.heap_index = SIZE_MAX
        with nogil:
            pthread_mutex_lock(&cl.lock)
            c.cancelled = True
            if c.state == CALL_DONE:
                pass                        # take() drops it
            elif cl.closed:
                c.cancel_seen = True        # the loop is gone: publish() frees it
            else:
                append_locked(cl, op)
                op = NULL
                signal = not cl.sub_signalled
                cl.sub_signalled = True
            pthread_mutex_unlock(&cl.lock)
            if signal:
                write(cl.wake_fd, &one, sizeof(one))
        free(op)
        return True

    def close_address(self, str address):
        """Retire the connection to ``address`` once its calls finish (GOAWAY, then close); a
        later call to it opens a new one."""
        cdef Client* cl = self.cl
        cdef bytes addr = address.encode()
        cdef Call* op
        cdef bint queued
        if len(addr) > MAX_ADDRESS:
            return
        op = <Call*>calloc(1, sizeof(Call))
        if op == NULL:
            raise MemoryError()
        op.kind = OP_CLOSE_ADDRESS
        op.heap_index = SIZE_MAX
        op.block = <uint8_t*>malloc(len(addr) + 1)
        if op.block == NULL:
            call_free(op)
            raise MemoryError()
        memcpy(op.block, <const char*>addr, len(addr))
        op.addr = op.block
        op.addr_len = len(addr)
        with nogil:
            queued = enqueue(cl, op, True)
        if not queued:
            call_free(op)

    def wake(self):
        """Wake the loop for calls handed in with ``wake=False`` (nothing when none wait, or
        when it was woken already since it last took the queue)."""
        cdef Client* cl = self.cl
        cdef bint signal
        cdef uint64_t one = 1
        with nogil:
            pthread_mutex_lock(&cl.lock)
            signal = cl.sub_head != NULL and not cl.sub_signalled
            if signal:
                cl.sub_signalled = True
            pthread_mutex_unlock(&cl.lock)
            if signal:
                write(cl.wake_fd, &one, sizeof(one))

    def take(self):
        """Every finished call, at once: a list of ``(call_id, grpc_status, message, reply,
        trailing_metadata)``. ``reply`` is the reply message's bytes (status 0) or None;
        ``trailing_metadata`` is a tuple of (name, value) pairs, values of ``-bin`` names
        base64-decoded to bytes (as grpc's Python API gives them), others str. Resets notify_fd."""
        cdef uint64_t counter
        read(self.cl.notify_fd, &counter, sizeof(counter))        # reset before taking the queue
        return self._take()

    def poll(self, bint events=True):
        """Inline mode: run one turn of the loop on this thread (no waiting, the GIL held) and
        return what finished, as ``take()`` does. For a caller whose own event loop watches
        ``fileno()`` and calls this when it is readable, and once after handing calls in (with
        ``wake=False``; ``events=False`` then skips looking for socket events, one syscall less):
        no thread of the client's own, no eventfd between threads. Deadlines are kept with a
        timerfd in the epoll set. Not with ``start()``; ``stop()`` ends it."""
        cdef Client* cl = self.cl
        cdef int rc
        if self.started:
            raise RuntimeError("poll() is for a client that was not start()ed")
        if cl.closed:
            return self._take()
        cl.inline = True
        # The GIL is kept: a turn takes microseconds, and giving it up could hand it to another
        # thread for up to a switch interval before this one (the caller's event loop) gets it back.
        rc = run_turn(cl, 0 if events else -2)
        if rc == 1:
            shutdown_all(cl)
        elif rc < 0:
            raise OSError(errno, "epoll_wait failed")
        return self._take()

    def fileno(self):
        """The loop's epoll fd: readable when a turn of ``poll()`` has work (inline mode)."""
        return self.cl.epoll_fd

    cdef list _take(self):
        cdef Client* cl = self.cl
        cdef Call* c
        cdef Call* nxt
        cdef list out = []
        with nogil:
            pthread_mutex_lock(&cl.lock)
            c = cl.done_head
            cl.done_head = cl.done_tail = NULL
            pthread_mutex_unlock(&cl.lock)
        try:
            while c != NULL:
                nxt = c.next
                if not c.cancelled:
                    self.live.pop(c.id, None)
                    out.append(delivered(c))
                call_free(c)
                c = nxt
        finally:
            while c != NULL:
                nxt = c.next
                call_free(c)
                c = nxt
        return out

    @property
    def notify_fd(self):
        """An eventfd that is readable while finished calls wait for ``take()``."""
        return self.cl.notify_fd

    @property
    def stats(self):
        """Counters since start: calls handed in, calls delivered, of them errors (status != 0),
        connections opened, connections open now, the loop's wake-ups by ``call()`` (and
        ``cancel()``, ``close_address()``, ``wake()``), its writes of ``notify_fd``, and streams
        the server refused (REFUSED_STREAM) that were sent again."""
        cdef Client* cl = self.cl
        # plain counter reads: the loop may be changing them right now
        return {"calls": cl.calls, "completed": cl.completed, "errors": cl.errors,
                "connections": cl.connections, "open_connections": cl.open_conns,
                "wakeups": cl.wakeups, "notifies": cl.notifies, "refused": cl.refused}


cdef tuple delivered(Call* c):
    """A finished call as take() hands it out."""
    cdef str message = ""
    cdef object reply = None
    cdef list trailers = []
    cdef size_t off = 0
    cdef uint32_t n
    cdef bytes name, value
    if c.message_len:
        raw = PyBytes_FromStringAndSize(<const char*>c.message, c.message_len)
        if c.message_encoded:
            raw = unquote_to_bytes(raw)
        message = raw.decode("utf-8", "replace")
    if c.grpc_status == GRPC_OK and c.reply != NULL:
        reply = PyBytes_FromStringAndSize(<const char*>c.reply, c.reply_len)
    while off + 4 <= c.trailers_len:
        memcpy(&n, c.trailers + off, 4)
        name = PyBytes_FromStringAndSize(<const char*>c.trailers + off + 4, n)
        off += 4 + n
        memcpy(&n, c.trailers + off, 4)
        value = PyBytes_FromStringAndSize(<const char*>c.trailers + off + 4, n)
        off += 4 + n
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            # (4 - n % 4) % 4, not -n % 4: the module is built with cdivision
            trailers.append((key, base64.b64decode(value + b"=" * ((4 - len(value) % 4) % 4))))
        else:
            trailers.append((key, value.decode("latin-1")))
    return (c.id, c.grpc_status, message, reply, tuple(trailers))
