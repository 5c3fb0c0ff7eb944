"""mve's native HTTP/2 transport, phase 1: unary gRPC served over libnghttp2 on one epoll loop.

``H2Server`` listens on a TCP port and serves gRPC (HTTP/2 with prior knowledge, no TLS) from one
thread, with the GIL released for the whole loop: non-blocking sockets in one level-triggered epoll
set, each read handed to ``nghttp2_session_mem_recv``, and what ``nghttp2_session_mem_send`` gives
gathered per connection and written once per loop turn. In phase 1 every answer comes from C: a
path added with ``add_canned`` is answered with its canned reply (HEADERS, one DATA with the 5-byte
gRPC prefix, trailers ``grpc-status: 0``) or its canned gRPC error; any other path gets
UNIMPLEMENTED. Requests are checked on the wire: gRPC framing, a message over ``max_message_bytes``
gets RESOURCE_EXHAUSTED as soon as its prefix arrives, ``grpc-timeout`` is honoured, a client's
RST_STREAM drops its stream, and ``stop()`` (any thread, or a signal handler) ends the loop with
GOAWAY on every connection. See docs/transport.md.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, strlen
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, write

import base64
import socket

MAX_MESSAGE_BYTES = 6 * 1024 * 1024
NGHTTP2_VERSION = nghttp2_version(0).version_str.decode()

cdef enum:
    MAX_EVENTS = 256
    READ_BUFFER_BYTES = 256 * 1024
    SEND_HIGH_WATER = 1024 * 1024       # unsent bytes per connection before we stop asking nghttp2
    STREAM_WINDOW = 16 * 1024 * 1024    # so that a 6 MB message flows without waiting for updates
    CONNECTION_WINDOW = 64 * 1024 * 1024
    MAX_FRAME = 1024 * 1024
    MAX_STREAMS = 1024
    LOOP_STOPPED = 0
    LOOP_SIGNAL = 1
    LOOP_ERROR = -1

# gRPC status codes used here
cdef enum:
    GRPC_OK = 0
    GRPC_DEADLINE_EXCEEDED = 4
    GRPC_RESOURCE_EXHAUSTED = 8
    GRPC_UNIMPLEMENTED = 12
    GRPC_INTERNAL = 13

cdef const char* H_STATUS = ":status"
cdef const char* H_200 = "200"
cdef const char* H_CONTENT_TYPE = "content-type"
cdef const char* H_GRPC = "application/grpc"
cdef const char* H_GRPC_STATUS = "grpc-status"
cdef const char* H_GRPC_MESSAGE = "grpc-message"
cdef const char* H_GRPC_DETAILS = "grpc-status-details-bin"
cdef const char* H_STATUS_OK = "0"

cdef uint8_t NO_COPY = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE


# ---------------------------------------------------------------------------------------------
# small C helpers

cdef inline void set_nv(nghttp2_nv* nv, const char* name, const void* value, size_t valuelen,
                        uint8_t flags) noexcept nogil:
    nv.name = <uint8_t*>name
    nv.namelen = strlen(name)
    nv.value = <uint8_t*>value
    nv.valuelen = valuelen
    nv.flags = flags


cdef size_t percent_encode(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) noexcept nogil:
    """gRPC's percent-encoding of grpc-message (bytes outside 0x20-0x7e and '%' become %XX)."""
    cdef const char* hexdigits = "0123456789ABCDEF"
    cdef size_t i, out = 0
    cdef uint8_t b
    for i in range(n):
        b = src[i]
        if 0x20 <= b <= 0x7e and b != 0x25:
            if out + 1 > cap:
                break
            dst[out] = b
            out += 1
        else:
            if out + 3 > cap:
                break
            dst[out] = 0x25
            dst[out + 1] = hexdigits[b >> 4]
            dst[out + 2] = hexdigits[b & 15]
            out += 3
    return out


cdef int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int64_t parse_timeout_ns(const uint8_t* v, size_t n) noexcept nogil:
    """grpc-timeout (1 to 8 digits and a unit of H M S m u n) in ns; -1 when malformed."""
    cdef uint64_t value = 0, unit
    cdef size_t i
    if n < 2 or n > 9:
        return -1
    for i in range(n - 1):
        if v[i] < 0x30 or v[i] > 0x39:
            return -1
        value = value * 10 + (v[i] - 0x30)
    if v[n - 1] == b'H':
        unit = 3600000000000
    elif v[n - 1] == b'M':
        unit = 60000000000
    elif v[n - 1] == b'S':
        unit = 1000000000
    elif v[n - 1] == b'm':
        unit = 1000000
    elif v[n - 1] == b'u':
        unit = 1000
    elif v[n - 1] == b'n':
        unit = 1
    else:
        return -1
    if value > <uint64_t>1000000000000000000 // unit:   # cap at ~31 years
        return 1000000000000000000
    return <int64_t>(value * unit)


# ---------------------------------------------------------------------------------------------
# answers

cdef int answer_error(nghttp2_session* session, Stream* st, const char* status, const uint8_t* message,
                      size_t message_len, const uint8_t* details, size_t details_len,
                      uint8_t copy_flags) noexcept nogil:
    """A trailers-only answer: one HEADERS frame with :status 200, grpc-status and END_STREAM."""
    cdef nghttp2_nv nva[5]
    cdef size_t n = 3
    set_nv(&nva[0], H_STATUS, H_200, 3, NO_COPY)
    set_nv(&nva[1], H_CONTENT_TYPE, H_GRPC, 16, NO_COPY)
    set_nv(&nva[2], H_GRPC_STATUS, status, strlen(status), NO_COPY)
    if message_len:
        set_nv(&nva[n], H_GRPC_MESSAGE, message, message_len, copy_flags)
        n += 1
    if details_len:
        set_nv(&nva[n], H_GRPC_DETAILS, details, details_len, copy_flags)
        n += 1
    st.answered = True
    return nghttp2_submit_response(session, st.id, nva, n, NULL)


cdef ssize_t read_reply(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                        uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept nogil:
    """The data provider of a canned reply: copy it out, then end with the trailers."""
    cdef Stream* st = <Stream*>source.ptr
    cdef size_t n = st.out_len - st.out_off
    cdef nghttp2_nv trailer
    if n > length:
        n = length
    memcpy(buf, st.out + st.out_off, n)
    st.out_off += n
    if st.out_off == st.out_len:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM
        set_nv(&trailer, H_GRPC_STATUS, H_STATUS_OK, 1, NO_COPY)
        if nghttp2_submit_trailer(session, stream_id, &trailer, 1) != 0:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return <ssize_t>n


cdef int answer(nghttp2_session* session, Conn* conn, Stream* st) noexcept nogil:
    """Answer a complete request from the canned table."""
    cdef const Canned* route = st.route
    cdef uint8_t text[512]
    cdef size_t n
    cdef nghttp2_nv nva[2]
    cdef nghttp2_data_provider provider
    cdef Server* server = conn.server
    if route == NULL:
        memcpy(text, b"unknown method ", 15)
        n = 15 + percent_encode(st.path, st.path_len, text + 15, sizeof(text) - 15)
        server.errors += 1
        return answer_error(session, st, "12", text, n, NULL, 0, NGHTTP2_NV_FLAG_NONE)
    if st.deadline_ns and now_ns() > st.deadline_ns:
        server.errors += 1
        return answer_error(session, st, "4", <const uint8_t*>"Deadline Exceeded", 17, NULL, 0, NO_COPY)
    if st.messages != 1 or st.prefix_got or st.message_left:
        server.errors += 1
        return answer_error(session, st, "13", <const uint8_t*>"a unary call takes exactly one request message",
                            46, NULL, 0, NO_COPY)
    if route.body == NULL:
        server.errors += 1
        return answer_error(session, st, route.status, route.message, route.message_len, route.details,
                            route.details_len, NO_COPY)
    st.answered = True
    st.out = route.body
    st.out_len = route.body_len
    st.out_off = 0
    set_nv(&nva[0], H_STATUS, H_200, 3, NO_COPY)
    set_nv(&nva[1], H_CONTENT_TYPE, H_GRPC, 16, NO_COPY)
    provider.source.ptr = st
    provider.read_callback = read_reply
    server.requests += 1
    return nghttp2_submit_response(session, st.id, nva, 2, &provider)


# ---------------------------------------------------------------------------------------------
# nghttp2 callbacks (user_data: the Conn)

cdef int on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef Stream* st
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    st = <Stream*>calloc(1, sizeof(Stream))
    if st == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    st.id = frame.hd.stream_id
    st.conn = <Conn*>user_data
    st.next = st.conn.streams
    if st.next != NULL:
        st.next.prev = st
    st.conn.streams = st
    nghttp2_session_set_stream_user_data(session, st.id, st)
    return 0


cdef int on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                   const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept nogil:
    cdef Stream* st
    cdef Server* server
    cdef int i
    cdef int64_t timeout
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    st = <Stream*>nghttp2_session_get_stream_user_data(session, frame.hd.stream_id)
    if st == NULL:
        return 0
    if namelen == 5 and memcmp(name, b":path", 5) == 0:
        st.path_len = valuelen if valuelen < sizeof(st.path) else sizeof(st.path)
        memcpy(st.path, value, st.path_len)
        server = (<Conn*>user_data).server
        for i in range(server.n_canned):
            if server.canned[i].path_len == valuelen and memcmp(server.canned[i].path, value, valuelen) == 0:
                st.route = &server.canned[i]
                break
    elif namelen == 12 and memcmp(name, b"grpc-timeout", 12) == 0:
        timeout = parse_timeout_ns(value, valuelen)
        if timeout >= 0:
            st.deadline_ns = now_ns() + timeout
    return 0


cdef int on_data_chunk_recv(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                            size_t length, void* user_data) noexcept nogil:
    """Follow the gRPC framing (1 flag byte, 4 length bytes, message) without keeping the bytes."""
    cdef Stream* st = <Stream*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef Conn* conn = <Conn*>user_data
    cdef size_t i = 0, take
    cdef uint64_t size
    if st == NULL or st.answered:
        return 0
    while i < length:
        if st.message_left == 0:
            st.prefix[st.prefix_got] = data[i]
            st.prefix_got += 1
            i += 1
            if st.prefix_got < 5:
                continue
            size = (<uint64_t>st.prefix[1] << 24) | (<uint64_t>st.prefix[2] << 16) | \
                   (<uint64_t>st.prefix[3] << 8) | st.prefix[4]
            st.messages += 1
            if size > conn.server.max_message:
                conn.server.errors += 1
                answer_error(session, st, "8", <const uint8_t*>"request message larger than the limit",
                             37, NULL, 0, NO_COPY)
                # The rest of the request is read and dropped: a RST_STREAM(NO_ERROR) after the
                # answer (RFC 9113 8.1) makes grpc-core clients report INTERNAL instead of it.
                return 0
            st.message_left = size
            st.prefix_got = 0
            if size == 0:
                continue
        take = length - i
        if take > st.message_left:
            take = <size_t>st.message_left
        st.message_left -= take
        i += take
    return 0


cdef int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef Stream* st
    if frame.hd.type == NGHTTP2_DATA or frame.hd.type == NGHTTP2_HEADERS:
        if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            st = <Stream*>nghttp2_session_get_stream_user_data(session, frame.hd.stream_id)
            if st != NULL and not st.answered:
                if answer(session, <Conn*>user_data, st) != 0:
                    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR)
    elif frame.hd.type == NGHTTP2_RST_STREAM:
        (<Conn*>user_data).server.resets += 1
    return 0


cdef int on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                         void* user_data) noexcept nogil:
    cdef Stream* st = <Stream*>nghttp2_session_get_stream_user_data(session, stream_id)
    if st != NULL:
        nghttp2_session_set_stream_user_data(session, stream_id, NULL)
        stream_free(st)
    return 0


# ---------------------------------------------------------------------------------------------
# connections and the loop

cdef void mark_dirty(Server* s, Conn* c) noexcept nogil:
    cdef Conn** grown
    if c.dirty:
        return
    if s.n_dirty == s.dirty_cap:
        grown = <Conn**>realloc(s.dirty, (s.dirty_cap * 2 + 16) * sizeof(Conn*))
        if grown == NULL:
            return
        s.dirty = grown
        s.dirty_cap = s.dirty_cap * 2 + 16
    c.dirty = True
    s.dirty[s.n_dirty] = c
    s.n_dirty += 1


cdef void conn_open(Server* s, int fd) noexcept nogil:
    cdef Conn* c = <Conn*>calloc(1, sizeof(Conn))
    cdef int one = 1
    cdef nghttp2_settings_entry settings[3]
    cdef epoll_event ev
    if c == NULL:
        close(fd)
        return
    c.fd = fd
    c.server = s
    if nghttp2_session_server_new2(&c.session, s.callbacks, c, s.option) != 0:
        free(c)
        close(fd)
        return
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    settings[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
    settings[0].value = MAX_STREAMS
    settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    settings[1].value = STREAM_WINDOW
    settings[2].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
    settings[2].value = MAX_FRAME
    nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, settings, 3)
    nghttp2_session_set_local_window_size(c.session, NGHTTP2_FLAG_NONE, 0, CONNECTION_WINDOW)
    ev.events = EPOLLIN
    ev.data.ptr = c
    if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0:
        nghttp2_session_del(c.session)
        free(c)
        close(fd)
        return
    c.next = s.conns
    if s.conns != NULL:
        s.conns.prev = c
    s.conns = c
    s.accepted += 1
    s.open_conns += 1
    mark_dirty(s, c)    # our SETTINGS go out at the end of this turn


cdef void stream_free(Stream* st) noexcept nogil:
    if st.prev != NULL:
        st.prev.next = st.next
    else:
        st.conn.streams = st.next
    if st.next != NULL:
        st.next.prev = st.prev
    free(st)


cdef void conn_free(Server* s, Conn* c) noexcept nogil:
    """Close the socket and free everything of a connection (its streams go with the session)."""
    close(c.fd)
    # nghttp2_session_del does not call on_stream_close: the streams' user data is freed here
    nghttp2_session_del(c.session)
    while c.streams != NULL:
        stream_free(c.streams)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        s.conns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    free(c.wbuf)
    free(c)
    s.open_conns -= 1


cdef void conn_read(Server* s, Conn* c) noexcept nogil:
    cdef ssize_t n
    while True:
        n = recv(c.fd, s.rbuf, s.rbuf_size, 0)
        if n > 0:
            if nghttp2_session_mem_recv(c.session, s.rbuf, <size_t>n) < 0:
                c.dead = True
            mark_dirty(s, c)
            if c.dead or <size_t>n < s.rbuf_size:
                return
        elif n == 0:
            c.dead = True
            mark_dirty(s, c)
            return
        elif errno == EINTR:
            continue
        else:
            if errno != EAGAIN:
                c.dead = True
                mark_dirty(s, c)
            return


cdef bint conn_flush(Server* s, Conn* c) noexcept nogil:
    """Write what nghttp2 has for this connection in as few send() calls as the socket allows.

    False when the connection is finished (closed by either side, or broken); the caller frees it.
    """
    cdef const uint8_t* data
    cdef ssize_t n
    cdef size_t need, cap
    cdef uint8_t* grown
    cdef epoll_event ev
    if c.dead:
        return False
    while True:
        while c.wlen - c.woff < SEND_HIGH_WATER:
            n = nghttp2_session_mem_send(c.session, &data)
            if n < 0:
                return False
            if n == 0:
                break
            need = c.wlen + <size_t>n
            if need > c.wcap:
                cap = c.wcap * 2 if c.wcap else 16384
                while cap < need:
                    cap *= 2
                grown = <uint8_t*>realloc(c.wbuf, cap)
                if grown == NULL:
                    return False
                c.wbuf = grown
                c.wcap = cap
            memcpy(c.wbuf + c.wlen, data, <size_t>n)
            c.wlen = need
        if c.wlen == c.woff:
            break
        n = send(c.fd, c.wbuf + c.woff, c.wlen - c.woff, MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            if errno != EAGAIN:
                return False
            break
        c.woff += <size_t>n
        if c.woff < c.wlen:
            break
        c.woff = c.wlen = 0
    if (c.woff < c.wlen) != c.want_out:
        c.want_out = c.woff < c.wlen
        ev.events = EPOLLIN | EPOLLOUT if c.want_out else EPOLLIN
        ev.data.ptr = c
        epoll_ctl(s.epoll_fd, EPOLL_CTL_MOD, c.fd, &ev)
    if c.woff == c.wlen and not nghttp2_session_want_read(c.session) and not nghttp2_session_want_write(c.session):
        return False
    return True


cdef void flush_dirty(Server* s) noexcept nogil:
    cdef int i
    cdef Conn* c
    for i in range(s.n_dirty):
        c = s.dirty[i]
        c.dirty = False
        if not conn_flush(s, c):
            conn_free(s, c)
    s.n_dirty = 0


cdef void shutdown_all(Server* s) noexcept nogil:
    """GOAWAY to every connection, one last write each, then close everything and stop listening."""
    cdef Conn* c = s.conns
    cdef Conn* nxt
    while c != NULL:
        nxt = c.next
        if not c.dead:
            nghttp2_session_terminate_session(c.session, NGHTTP2_NO_ERROR)
            conn_flush(s, c)
        conn_free(s, c)
        c = nxt
    s.n_dirty = 0
    if s.listen_fd >= 0:
        close(s.listen_fd)
        s.listen_fd = -1


cdef int run_loop(Server* s) noexcept nogil:
    """Serve until stop() (LOOP_STOPPED), a signal (LOOP_SIGNAL: check it, then call again) or an error."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i, fd
    cdef void* tag
    cdef Conn* c
    while not s.stopping:
        n = epoll_wait(s.epoll_fd, events, MAX_EVENTS, -1)
        if n < 0:
            if errno == EINTR:
                return LOOP_SIGNAL
            return LOOP_ERROR
        for i in range(n):
            tag = events[i].data.ptr
            if tag == &s.listen_fd:
                while True:
                    fd = accept4(s.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                    if fd < 0:
                        break
                    conn_open(s, fd)
            elif tag == &s.stop_fd:
                s.stopping = True
            else:
                c = <Conn*>tag
                if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                    conn_read(s, c)
                if events[i].events & EPOLLOUT:
                    mark_dirty(s, c)
        flush_dirty(s)
    shutdown_all(s)
    return LOOP_STOPPED


# ---------------------------------------------------------------------------------------------
# the Python API

cdef class H2Server:
    """A unary gRPC server on libnghttp2 and one epoll loop that runs with the GIL released.

    Binds ``host:port`` at once (port 0: a free one, see ``port``). Add canned answers, then call
    ``serve_forever()`` in one thread; ``stop()`` from any thread or a signal handler ends it.
    """

    cdef Server* srv
    cdef int _port
    cdef bint serving
    cdef bint finished

    def __cinit__(self):
        self.srv = <Server*>calloc(1, sizeof(Server))
        if self.srv == NULL:
            raise MemoryError()
        self.srv.listen_fd = self.srv.epoll_fd = self.srv.stop_fd = -1

    def __init__(self, str host="127.0.0.1", int port=0, *, max_message_bytes=MAX_MESSAGE_BYTES, int backlog=1024):
        cdef Server* s = self.srv
        cdef epoll_event ev
        if not 0 <= max_message_bytes <= 0xFFFFFFFF:
            raise ValueError("max_message_bytes must be in [0, 2**32)")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
            self._port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        s.listen_fd = sock.detach()
        s.max_message = max_message_bytes
        s.rbuf_size = READ_BUFFER_BYTES
        s.rbuf = <uint8_t*>malloc(s.rbuf_size)
        s.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
        s.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if s.rbuf == NULL or s.epoll_fd < 0 or s.stop_fd < 0:
            raise OSError(errno, "cannot set up the epoll loop")
        ev.events = EPOLLIN
        ev.data.ptr = &s.listen_fd
        if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.listen_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        ev.data.ptr = &s.stop_fd
        if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.stop_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        if nghttp2_session_callbacks_new(&s.callbacks) != 0 or nghttp2_option_new(&s.option) != 0:
            raise MemoryError()
        nghttp2_option_set_no_closed_streams(s.option, 1)
        nghttp2_session_callbacks_set_on_begin_headers_callback(s.callbacks, on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(s.callbacks, on_header)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s.callbacks, on_data_chunk_recv)
        nghttp2_session_callbacks_set_on_frame_recv_callback(s.callbacks, on_frame_recv)
        nghttp2_session_callbacks_set_on_stream_close_callback(s.callbacks, on_stream_close)

    def __dealloc__(self):
        cdef Server* s = self.srv
        cdef int i
        if s == NULL:
            return
        while s.conns != NULL:
            conn_free(s, s.conns)
        for fd in (s.listen_fd, s.epoll_fd, s.stop_fd):
            if fd >= 0:
                close(fd)
        for i in range(s.n_canned):
            free_canned(&s.canned[i])
        free(s.canned)
        free(s.dirty)
        free(s.rbuf)
        if s.callbacks != NULL:
            nghttp2_session_callbacks_del(s.callbacks)
        if s.option != NULL:
            nghttp2_option_del(s.option)
        free(s)
        self.srv = NULL

    def add_canned(self, path, reply=None, *, int status=0, str message="", details=b""):
        """Answer ``path`` (e.g. ``/pkg.Service/Method``) from C: with the message bytes ``reply``
        (status 0), or with the gRPC error ``status`` (non-zero, no reply), ``message`` and
        ``details`` (the serialised google.rpc.Status for grpc-status-details-bin). Replaces an
        earlier answer for the same path; only before ``serve_forever``.
        """
        cdef Canned entry
        cdef Canned* grown
        cdef bytes encoded
        cdef int i
        if self.serving or self.finished:
            raise RuntimeError("add_canned must come before serve_forever")
        raw_path = path.encode() if isinstance(path, str) else bytes(path)
        if not raw_path.startswith(b"/"):
            raise ValueError("path must start with '/'")
        if not 0 <= status <= 16:
            raise ValueError("status must be a gRPC status code, 0 to 16")
        if status == 0:
            if reply is None:
                raise ValueError("a reply is needed for status 0")
            body = bytes(reply)
            if len(body) > 0xFFFFFFFF:
                raise ValueError("reply too large for one gRPC message")
        elif reply is not None:
            raise ValueError("an error answer (status != 0) carries no reply")
        memset_canned(&entry)
        try:
            entry.path = dup_bytes(raw_path)
            entry.path_len = len(raw_path)
            entry.status_code = status
            encoded = str(status).encode()
            memcpy(entry.status, <const char*>encoded, len(encoded) + 1)
            if status == 0:
                framed = b"\x00" + len(body).to_bytes(4, "big") + body
                entry.body = dup_bytes(framed)
                entry.body_len = len(framed)
            if message:
                raw = message.encode()
                out = bytearray(3 * len(raw))
                encoded = bytes(out[:percent_encode_bytes(raw, out)])
                entry.message = dup_bytes(encoded)
                entry.message_len = len(encoded)
            if details:
                encoded = base64.b64encode(bytes(details)).rstrip(b"=")
                entry.details = dup_bytes(encoded)
                entry.details_len = len(encoded)
        except BaseException:
            free_canned(&entry)
            raise
        s = self.srv
        for i in range(s.n_canned):
            if s.canned[i].path_len == entry.path_len and memcmp(s.canned[i].path, entry.path, entry.path_len) == 0:
                free_canned(&s.canned[i])
                s.canned[i] = entry
                return
        grown = <Canned*>realloc(s.canned, (s.n_canned + 1) * sizeof(Canned))
        if grown == NULL:
            free_canned(&entry)
            raise MemoryError()
        s.canned = grown
        s.canned[s.n_canned] = entry
        s.n_canned += 1

    def serve_forever(self):
        """Serve on this thread, with the GIL released, until ``stop()``; then GOAWAY to every
        connection, close them and the listening socket. A signal's Python handler runs while it
        serves; an exception from it stops the server and is raised here. Serves once.
        """
        cdef int rc
        if self.serving or self.finished:
            raise RuntimeError("serve_forever runs once")
        self.serving = True
        try:
            while True:
                with nogil:
                    rc = run_loop(self.srv)
                if rc == LOOP_STOPPED:
                    return
                if rc == LOOP_ERROR:
                    raise OSError(errno, "epoll_wait failed")
                PyErr_CheckSignals()
        finally:
            if not self.srv.stopping:
                with nogil:
                    shutdown_all(self.srv)
            self.serving = False
            self.finished = True

    def stop(self):
        """End ``serve_forever`` (from any thread or a signal handler); safe to call more than once."""
        cdef uint64_t one = 1
        if self.srv.stop_fd >= 0:
            write(self.srv.stop_fd, &one, sizeof(one))

    @property
    def port(self):
        """The bound TCP port."""
        return self._port

    @property
    def stats(self):
        """Counters since start: connections accepted and open, requests answered OK, gRPC errors
        answered, RST_STREAM frames received."""
        cdef Server* s = self.srv
        # plain counter reads: the serving thread may be changing the connection list right now
        return {"connections": s.accepted, "open_connections": s.open_conns, "requests": s.requests,
                "errors": s.errors, "resets": s.resets}


cdef void memset_canned(Canned* c) noexcept:
    c.path = c.body = c.message = c.details = NULL
    c.path_len = c.body_len = c.message_len = c.details_len = 0
    c.status_code = 0
    c.status[0] = 0


cdef void free_canned(Canned* c) noexcept:
    free(c.path)
    free(c.body)
    free(c.message)
    free(c.details)
    memset_canned(c)


cdef uint8_t* dup_bytes(bytes data) except NULL:
    cdef uint8_t* copy = <uint8_t*>malloc(len(data) + 1)
    if copy == NULL:
        raise MemoryError()
    memcpy(copy, <const char*>data, len(data))
    copy[len(data)] = 0
    return copy


cdef size_t percent_encode_bytes(bytes raw, bytearray out):
    cdef const uint8_t[:] src = raw
    cdef uint8_t[:] dst = out
    if len(raw) == 0:
        return 0
    return percent_encode(&src[0], len(raw), &dst[0], len(out))
