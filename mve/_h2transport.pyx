"""mve's native HTTP/2 transport: unary gRPC served over libnghttp2 on one epoll loop.

``H2Server`` listens on a TCP port and serves gRPC (HTTP/2 with prior knowledge, no TLS) from one
thread, with the GIL released for the whole loop: non-blocking sockets in one level-triggered epoll
set, each read handed to ``nghttp2_session_mem_recv``, and what ``nghttp2_session_mem_send`` gives
gathered per connection and written once per loop turn. A path is answered in one of three ways:

- from C (``add_canned``): a canned reply (HEADERS, one DATA with the 5-byte gRPC prefix, trailers
  ``grpc-status: 0``) or a canned gRPC error; the phase-1 benchmark's no-op server;
- by Python, whole (``add_unary``): a complete unary request (its message, metadata and deadline)
  is handed over; Python answers with ``reply`` or ``fail``;
- by Python, as a stream (``forward_others=True``, every other path): the headers, each message and
  the end of the client's side are handed over as they come; Python answers with ``send`` and
  ``finish`` (how the proxy passes its cold methods on to a grpc.aio server).

Hand-overs go in bulk both ways: the loop gathers what a turn produced and publishes it at the turn's
end, waking Python (an eventfd, ``events_fd``) only when its mailbox was empty; Python's answers go
into the loop's mailbox, which wakes the loop the same way. Inline (``inline=True``) the loop has no
thread: the caller's event loop watches ``fileno()`` and runs a turn with ``poll()``, which returns
what the turn handed over, and no eventfd is written at all. Any other path gets UNIMPLEMENTED.
Requests are checked on the wire: gRPC framing, a message over ``max_message_bytes`` gets
RESOURCE_EXHAUSTED as soon as its prefix arrives, a compressed message INTERNAL, ``grpc-timeout``
is honoured (a stream still waiting on Python at its deadline is answered DEADLINE_EXCEEDED by the
loop and Python hears it as a cancel), a client's RST_STREAM drops its stream (Python hears a
cancel), ``shutdown()`` drains (GOAWAY naming the last stream taken, no new connections) and
``stop()`` (any thread, or a signal handler) ends the loop with GOAWAY on every connection. See
docs/transport.md.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strlen
from posix.time cimport CLOCK_MONOTONIC
from posix.unistd cimport close, read, write

from mve._h2io cimport WRITE_DONE, append_pointer, arm_timer_at, now_ns, write_pending, write_session

import binascii
import socket as pysocket

MAX_MESSAGE_BYTES = 6 * 1024 * 1024
# Request bytes the loop holds at once for Python, over all connections: a message whose next bytes
# would pass this is refused with RESOURCE_EXHAUSTED (a client can otherwise make the loop hold
# max_message_bytes on each of 1,024 streams of each connection). Bytes are counted as they arrive,
# not as a length prefix announces them, so prefixes alone reserve nothing: a client that announces
# large messages and sends no more cannot lock others out.
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
# A connection must send the HTTP/2 preface and its SETTINGS within this, else it is closed (as
# grpc-core's server handshake timeout, 120 s by default).
HANDSHAKE_TIMEOUT_S = 120
NGHTTP2_VERSION = nghttp2_version(0).version_str.decode()

cdef enum:
    MAX_EVENTS = 256
    READ_BUFFER_BYTES = 256 * 1024
    SEND_HIGH_WATER = 1024 * 1024       # unsent bytes per connection before we stop asking nghttp2
    STREAM_WINDOW = 16 * 1024 * 1024    # so that a 6 MB message flows without waiting for updates
    CONNECTION_WINDOW = 64 * 1024 * 1024
    MAX_FRAME = 1024 * 1024
    MAX_STREAMS = 1024
    MAX_CONNECTIONS = 65535             # a connection's slot is 16 bits of a stream's token
    MAX_METADATA_BYTES = 16 * 1024      # a request's metadata for Python, as grpc-core's hard limit
    FIRST_MESSAGE_CHUNK = 64 * 1024     # a message buffer's first size; it doubles as bytes arrive
    LOOP_STOPPED = 0
    LOOP_SIGNAL = 1
    LOOP_ERROR = -1

# how a stream is answered
cdef enum:
    ROUTE_NONE = 0          # no such method: UNIMPLEMENTED
    ROUTE_CANNED = 1        # from C
    ROUTE_UNARY = 2         # by Python, handed over whole
    ROUTE_FORWARD = 3       # by Python, handed over as a stream

# events for Python (the first item of each tuple take() gives)
cdef enum:
    EV_REQUEST = 1          # (EV_REQUEST, token, method index, message, timeout or None, metadata)
    EV_OPEN = 2             # (EV_OPEN, token, path, None, timeout or None, metadata)
    EV_MESSAGE = 3          # (EV_MESSAGE, token, None, message, None, ())
    EV_HALF_CLOSE = 4       # (EV_HALF_CLOSE, token, None, None, None, ())
    EV_CANCEL = 5           # (EV_CANCEL, token, None, None, None, ()): the client went or the deadline passed

# commands from Python
cdef enum:
    CMD_ANSWER = 1          # output and/or the final status of a stream
    CMD_SHUTDOWN = 2        # begin the drain

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
# mailboxes: the loop and Python's thread hand each other events and commands in bulk

cdef int mailbox_init(Mailbox* box, size_t item_size) noexcept nogil:
    box.items = NULL
    box.n = box.cap = 0
    box.item_size = item_size
    box.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if box.fd < 0:
        return -1
    return pthread_mutex_init(&box.lock, NULL)


cdef bint mailbox_put(Mailbox* box, const void* items, size_t n) noexcept nogil:
    """Append `n` items; wake the reader only when the box was empty (one wake-up per burst)."""
    cdef size_t cap
    cdef void* grown
    cdef bint was_empty
    cdef uint64_t one = 1
    if n == 0:
        return True
    pthread_mutex_lock(&box.lock)
    if box.n + n > box.cap:
        cap = box.cap * 2 + 64
        while cap < box.n + n:
            cap *= 2
        grown = realloc(box.items, cap * box.item_size)
        if grown == NULL:
            pthread_mutex_unlock(&box.lock)
            return False
        box.items = grown
        box.cap = cap
    memcpy(<uint8_t*>box.items + box.n * box.item_size, items, n * box.item_size)
    was_empty = box.n == 0
    box.n += n
    pthread_mutex_unlock(&box.lock)
    if was_empty and not box.quiet:
        write(box.fd, &one, sizeof(one))
    return True


cdef void* mailbox_take(Mailbox* box, size_t* n) noexcept nogil:
    """Everything in the box (the caller frees the array), emptying it; NULL when empty.

    The eventfd is read before the box is emptied, so an item put after that read wakes the reader again.
    """
    cdef uint64_t count
    cdef void* items
    if not box.quiet:
        read(box.fd, &count, sizeof(count))
    pthread_mutex_lock(&box.lock)
    items = box.items
    n[0] = box.n
    box.items = NULL
    box.n = box.cap = 0
    pthread_mutex_unlock(&box.lock)
    return items


# ---------------------------------------------------------------------------------------------
# tokens: a stream named to Python by its connection's slot, the slot's generation and its id

cdef inline uint64_t make_token(Conn* c, int32_t stream_id) noexcept nogil:
    return (<uint64_t>c.slot << 31) | <uint64_t>stream_id


cdef Stream* stream_of_token(Server* s, uint64_t serial, uint64_t token) noexcept nogil:
    """The stream (serial, token) names, or NULL when it (or its connection) is gone."""
    cdef uint64_t slot = token >> 31
    cdef int32_t stream_id = <int32_t>(token & 0x7FFFFFFF)
    cdef Conn* c
    cdef Stream* st
    if slot >= s.n_slots:
        return NULL
    c = s.slots[slot]
    if c == NULL or c.dead or c.serial != serial:
        return NULL
    st = <Stream*>nghttp2_session_get_stream_user_data(c.session, stream_id)
    if st == NULL or st.token != token:
        return NULL
    return st


cdef bint slot_take(Server* s, Conn* c) noexcept nogil:
    """Give `c` a free slot (growing the table up to MAX_CONNECTIONS) and a serial; False when no slot is left."""
    cdef uint32_t n, i
    cdef Conn** slots
    cdef uint32_t* free_slots
    if s.n_free == 0:
        if s.n_slots >= MAX_CONNECTIONS:
            return False
        n = s.n_slots * 2 + 64
        if n > MAX_CONNECTIONS:
            n = MAX_CONNECTIONS
        slots = <Conn**>realloc(s.slots, n * sizeof(Conn*))
        if slots == NULL:
            return False
        s.slots = slots
        free_slots = <uint32_t*>realloc(s.free_slots, n * sizeof(uint32_t))
        if free_slots == NULL:
            return False
        s.free_slots = free_slots
        i = n
        while i > s.n_slots:       # pushed highest first: the lowest new slot is taken first
            i -= 1
            s.slots[i] = NULL
            s.free_slots[s.n_free] = i
            s.n_free += 1
        s.n_slots = n
    s.n_free -= 1
    c.slot = s.free_slots[s.n_free]
    s.slots[c.slot] = c
    s.next_serial += 1
    c.serial = s.next_serial
    return True


cdef void slot_give_back(Server* s, Conn* c) noexcept nogil:
    s.slots[c.slot] = NULL
    s.free_slots[s.n_free] = c.slot
    s.n_free += 1


# ---------------------------------------------------------------------------------------------
# events for Python, and the deadlines of the streams handed to it

cdef Event* new_event(Server* s, int kind, Stream* st) noexcept nogil:
    """A zeroed event of this loop turn, or NULL without memory."""
    cdef Event* grown
    cdef Event* ev
    if s.n_local == s.local_cap:
        grown = <Event*>realloc(s.local, (s.local_cap * 2 + 64) * sizeof(Event))
        if grown == NULL:
            return NULL
        s.local = grown
        s.local_cap = s.local_cap * 2 + 64
    ev = &s.local[s.n_local]
    s.n_local += 1
    memset(ev, 0, sizeof(Event))
    ev.kind = kind
    ev.serial = st.conn.serial
    ev.token = st.token
    ev.deadline_ns = st.deadline_ns
    return ev


cdef void publish_events(Server* s) noexcept nogil:
    cdef size_t i
    if s.n_local == 0:
        return
    if not mailbox_put(&s.events, s.local, s.n_local):
        for i in range(s.n_local):
            free(s.local[i].body)
            free(s.local[i].meta)
    s.n_local = 0


cdef inline void heap_place(Server* s, size_t i, Deadline item) noexcept nogil:
    s.deadlines[i] = item
    item.stream.heap_index = i + 1


cdef void heap_sift_up(Server* s, size_t i, Deadline item) noexcept nogil:
    cdef size_t parent
    while i > 0:
        parent = (i - 1) // 2
        if s.deadlines[parent].at_ns <= item.at_ns:
            break
        heap_place(s, i, s.deadlines[parent])
        i = parent
    heap_place(s, i, item)


cdef void heap_sift_down(Server* s, size_t i, Deadline item) noexcept nogil:
    cdef size_t child
    while True:
        child = 2 * i + 1
        if child >= s.n_deadlines:
            break
        if child + 1 < s.n_deadlines and s.deadlines[child + 1].at_ns < s.deadlines[child].at_ns:
            child += 1
        if s.deadlines[child].at_ns >= item.at_ns:
            break
        heap_place(s, i, s.deadlines[child])
        i = child
    heap_place(s, i, item)


cdef void deadline_push(Server* s, Stream* st) noexcept nogil:
    cdef Deadline* grown
    cdef Deadline item
    if s.n_deadlines == s.deadlines_cap:
        grown = <Deadline*>realloc(s.deadlines, (s.deadlines_cap * 2 + 64) * sizeof(Deadline))
        if grown == NULL:
            return      # without memory the stream has no server-side deadline; the caller's own still holds
        s.deadlines = grown
        s.deadlines_cap = s.deadlines_cap * 2 + 64
    item.at_ns = st.deadline_ns
    item.stream = st
    s.n_deadlines += 1
    heap_sift_up(s, s.n_deadlines - 1, item)


cdef void deadline_remove(Server* s, Stream* st) noexcept nogil:
    """Take the stream's deadline out of the heap (it no longer waits on Python, or it is going)."""
    cdef size_t i
    cdef Deadline last
    if st.heap_index == 0:
        return
    i = st.heap_index - 1
    st.heap_index = 0
    s.n_deadlines -= 1
    if i == s.n_deadlines:
        return
    last = s.deadlines[s.n_deadlines]
    if i > 0 and s.deadlines[(i - 1) // 2].at_ns > last.at_ns:
        heap_sift_up(s, i, last)
    else:
        heap_sift_down(s, i, last)


cdef void hand_over(Server* s, Stream* st) noexcept nogil:
    """The stream now waits on Python: it owes an answer, and its deadline is watched."""
    st.handed = True
    s.handed_off += 1
    if st.deadline_ns:
        deadline_push(s, st)


cdef void expire_deadlines(Server* s) noexcept nogil:
    """Answer DEADLINE_EXCEEDED on every stream still waiting on Python past its deadline."""
    cdef int64_t now
    cdef Stream* st
    if s.n_deadlines == 0:
        return
    now = now_ns()
    while s.n_deadlines and s.deadlines[0].at_ns <= now:
        st = s.deadlines[0].stream
        deadline_remove(s, st)
        if st.handed and not st.answered:
            s.deadline_exceeded += 1
            fail_stream(s, st, "4", <const uint8_t*>"Deadline Exceeded", 17)


cdef void handshake_done(Server* s, Conn* c) noexcept nogil:
    """Take `c` off the list of connections still in their handshake."""
    if c.handshake_deadline_ns == 0:
        return
    c.handshake_deadline_ns = 0
    if c.hs_prev != NULL:
        c.hs_prev.hs_next = c.hs_next
    else:
        s.hs_head = c.hs_next
    if c.hs_next != NULL:
        c.hs_next.hs_prev = c.hs_prev
    else:
        s.hs_tail = c.hs_prev
    c.hs_prev = c.hs_next = NULL


cdef void expire_handshakes(Server* s) noexcept nogil:
    """Close the connections that sent no frame (the preface and SETTINGS) within the handshake
    timeout: a peer that connects and stays silent would hold its socket and slot forever."""
    cdef int64_t now
    cdef Conn* c
    if s.hs_head == NULL:
        return
    now = now_ns()
    while s.hs_head != NULL and s.hs_head.handshake_deadline_ns <= now:
        c = s.hs_head
        handshake_done(s, c)
        s.handshake_timeouts += 1
        c.dead = True
        mark_dirty(s, c)


cdef int loop_timeout_ms(Server* s) noexcept nogil:
    cdef int64_t wait, at
    if s.n_deadlines == 0 and s.hs_head == NULL:
        return -1
    if s.n_deadlines == 0:
        at = s.hs_head.handshake_deadline_ns
    elif s.hs_head == NULL or s.deadlines[0].at_ns < s.hs_head.handshake_deadline_ns:
        at = s.deadlines[0].at_ns
    else:
        at = s.hs_head.handshake_deadline_ns
    wait = (at - now_ns() + 999999) // 1000000
    if wait < 0:
        return 0
    if wait > 60000:
        return 60000
    return <int>wait


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
    # the status text may live in a command freed before nghttp2 writes the frame: copied unless static
    set_nv(&nva[2], H_GRPC_STATUS, status, strlen(status), copy_flags)
    if message_len:
        set_nv(&nva[n], H_GRPC_MESSAGE, message, message_len, copy_flags)
        n += 1
    if details_len:
        set_nv(&nva[n], H_GRPC_DETAILS, details, details_len, copy_flags)
        n += 1
    st.answered = True
    st.headers_sent = True
    return nghttp2_submit_response(session, st.id, nva, n, NULL)


cdef void fail_stream(Server* s, Stream* st, const char* status, const uint8_t* message,
                      size_t message_len) noexcept nogil:
    """End a stream with a gRPC error from C (trailers after any output already sent); a stream
    handed to Python gets a cancel event, so that Python stops working on it."""
    cdef Event* ev
    s.errors += 1
    if not st.headers_sent:
        if answer_error(st.conn.session, st, status, message, message_len, NULL, 0, NGHTTP2_NV_FLAG_NONE) != 0:
            nghttp2_submit_rst_stream(st.conn.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR)
    else:
        set_final_status(st, status, message, message_len, NULL, 0)
        st.olen = st.ooff = 0       # what Python queued and nghttp2 has not taken yet is dropped
        if st.deferred:
            st.deferred = False
            nghttp2_session_resume_data(st.conn.session, st.id)
    st.answered = True
    deadline_remove(s, st)
    if st.handed:
        st.handed = False
        ev = new_event(s, EV_CANCEL, st)
    mark_dirty(s, st.conn)


cdef void set_final_status(Stream* st, const char* status, const uint8_t* message, size_t message_len,
                           const uint8_t* details, size_t details_len) noexcept nogil:
    """Keep the final status (copies) for the trailers that follow the stream's output."""
    cdef size_t n = strlen(status)
    if n >= sizeof(st.fstatus):
        n = sizeof(st.fstatus) - 1
    memcpy(st.fstatus, status, n)
    st.fstatus[n] = 0
    free(st.fmessage)
    free(st.fdetails)
    st.fmessage = st.fdetails = NULL
    st.fmessage_len = st.fdetails_len = 0
    if message_len:
        st.fmessage = <uint8_t*>malloc(message_len)
        if st.fmessage != NULL:
            memcpy(st.fmessage, message, message_len)
            st.fmessage_len = message_len
    if details_len:
        st.fdetails = <uint8_t*>malloc(details_len)
        if st.fdetails != NULL:
            memcpy(st.fdetails, details, details_len)
            st.fdetails_len = details_len
    st.finishing = True


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


cdef ssize_t read_output(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                         uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept nogil:
    """The data provider of a stream answered by Python: its queued output, then the trailers once
    the final status is known; deferred while it waits for more."""
    cdef Stream* st = <Stream*>source.ptr
    cdef size_t n = st.olen - st.ooff
    cdef nghttp2_nv trailers[3]
    cdef size_t count = 1
    if n > length:
        n = length
    if n:
        memcpy(buf, st.obuf + st.ooff, n)
        st.ooff += n
        if st.ooff == st.olen:
            st.ooff = st.olen = 0
    if st.olen == 0 and st.finishing:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM
        set_nv(&trailers[0], H_GRPC_STATUS, st.fstatus, strlen(st.fstatus), NGHTTP2_NV_FLAG_NONE)
        if st.fmessage_len:
            set_nv(&trailers[count], H_GRPC_MESSAGE, st.fmessage, st.fmessage_len, NGHTTP2_NV_FLAG_NONE)
            count += 1
        if st.fdetails_len:
            set_nv(&trailers[count], H_GRPC_DETAILS, st.fdetails, st.fdetails_len, NGHTTP2_NV_FLAG_NONE)
            count += 1
        if nghttp2_submit_trailer(session, stream_id, trailers, count) != 0:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        return <ssize_t>n
    if n == 0:
        st.deferred = True
        return NGHTTP2_ERR_DEFERRED
    return <ssize_t>n


cdef int answer_canned(nghttp2_session* session, Conn* conn, Stream* st) noexcept nogil:
    """Answer a complete request from the canned table."""
    cdef const Canned* route = st.route
    cdef nghttp2_nv nva[2]
    cdef nghttp2_data_provider provider
    cdef Server* server = conn.server
    if route.body == NULL:
        server.errors += 1
        return answer_error(session, st, route.status, route.message, route.message_len, route.details,
                            route.details_len, NO_COPY)
    st.answered = True
    st.headers_sent = True
    st.out = route.body
    st.out_len = route.body_len
    st.out_off = 0
    set_nv(&nva[0], H_STATUS, H_200, 3, NO_COPY)
    set_nv(&nva[1], H_CONTENT_TYPE, H_GRPC, 16, NO_COPY)
    provider.source.ptr = st
    provider.read_callback = read_reply
    server.requests += 1
    return nghttp2_submit_response(session, st.id, nva, 2, &provider)


cdef void request_complete(Server* s, Conn* conn, Stream* st) noexcept nogil:
    """The client ended its side (END_STREAM): answer it, hand it to Python, or tell Python."""
    cdef uint8_t text[512]
    cdef size_t n
    cdef Event* ev
    if st.kind == ROUTE_FORWARD:
        if st.handed and not st.answered:
            if st.prefix_got or st.message_left:
                fail_stream(s, st, "13", <const uint8_t*>"the request ended inside a message", 34)
            else:
                new_event(s, EV_HALF_CLOSE, st)
        return
    if st.kind == ROUTE_NONE:
        memcpy(text, b"unknown method ", 15)
        n = 15 + percent_encode(st.path, st.path_len, text + 15, sizeof(text) - 15)
        fail_stream(s, st, "12", text, n)
        return
    if st.deadline_ns and now_ns() > st.deadline_ns:
        fail_stream(s, st, "4", <const uint8_t*>"Deadline Exceeded", 17)
        return
    if st.messages != 1 or st.prefix_got or st.message_left:
        fail_stream(s, st, "13", <const uint8_t*>"a unary call takes exactly one request message", 46)
        return
    if st.kind == ROUTE_CANNED:
        if answer_canned(conn.session, conn, st) != 0:
            nghttp2_submit_rst_stream(conn.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR)
        return
    # ROUTE_UNARY: the whole request goes to Python, its buffers with it
    ev = new_event(s, EV_REQUEST, st)
    if ev == NULL:
        fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
        return
    ev.method = st.method
    ev.body = st.ibuf
    ev.body_len = st.ilen
    ev.meta = st.meta
    ev.meta_len = st.meta_len
    s.buffered -= st.ibuf_counted
    st.ibuf_counted = 0
    st.ibuf = st.meta = NULL
    st.ilen = st.icap = st.meta_len = st.meta_cap = 0
    hand_over(s, st)


cdef void apply_command(Server* s, Command* cmd) noexcept nogil:
    """Python's answer (or part of it) for one stream; dropped when the stream is gone or answered."""
    cdef Stream* st = stream_of_token(s, cmd.serial, cmd.token)
    cdef nghttp2_nv nva[2]
    cdef nghttp2_data_provider provider
    cdef uint8_t* grown
    cdef size_t need, cap
    if st == NULL or st.answered or not st.handed:
        return
    if cmd.data_len:
        if st.olen == 0 and st.obuf == NULL:
            st.obuf = cmd.data              # the common case: take the buffer, no copy
            st.olen = st.ocap = cmd.data_len
            st.ooff = 0
            cmd.data = NULL
        else:
            need = st.olen + cmd.data_len
            if need > st.ocap:
                cap = st.ocap * 2 if st.ocap else 4096
                while cap < need:
                    cap *= 2
                grown = <uint8_t*>realloc(st.obuf, cap)
                if grown == NULL:
                    fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
                    return
                st.obuf = grown
                st.ocap = cap
            memcpy(st.obuf + st.olen, cmd.data, cmd.data_len)
            st.olen = need
    if cmd.finish:
        st.handed = False
        st.answered = True
        deadline_remove(st.conn.server, st)
        if not st.headers_sent and st.olen == 0:
            if answer_error(st.conn.session, st, cmd.status, cmd.message, cmd.message_len, cmd.details,
                            cmd.details_len, NGHTTP2_NV_FLAG_NONE) != 0:
                nghttp2_submit_rst_stream(st.conn.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR)
            mark_dirty(s, st.conn)
            return
        set_final_status(st, cmd.status, cmd.message, cmd.message_len, cmd.details, cmd.details_len)
        if cmd.status[0] == b'0' and cmd.status[1] == 0:
            s.requests += 1
        else:
            s.errors += 1
    if not st.headers_sent:
        st.headers_sent = True
        set_nv(&nva[0], H_STATUS, H_200, 3, NO_COPY)
        set_nv(&nva[1], H_CONTENT_TYPE, H_GRPC, 16, NO_COPY)
        provider.source.ptr = st
        provider.read_callback = read_output
        if nghttp2_submit_response(st.conn.session, st.id, nva, 2, &provider) != 0:
            nghttp2_submit_rst_stream(st.conn.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR)
    elif st.deferred:
        st.deferred = False
        nghttp2_session_resume_data(st.conn.session, st.id)
    mark_dirty(s, st.conn)


cdef void free_command(Command* cmd) noexcept nogil:
    free(cmd.data)
    free(cmd.message)
    free(cmd.details)


cdef void drain_commands(Server* s) noexcept nogil:
    cdef size_t n, i
    cdef Command* cmds = <Command*>mailbox_take(&s.commands, &n)
    for i in range(n):
        if cmds[i].kind == CMD_SHUTDOWN:
            begin_drain(s)
        elif not s.stopping:
            apply_command(s, &cmds[i])
        free_command(&cmds[i])
    free(cmds)


cdef void begin_drain(Server* s) noexcept nogil:
    """Stop accepting; GOAWAY on every connection naming the last stream taken, so that streams
    already open finish and new ones go elsewhere; each connection closes when its streams are done."""
    cdef Conn* c = s.conns
    if s.draining:
        return
    s.draining = True
    if s.listen_fd >= 0:
        epoll_ctl(s.epoll_fd, EPOLL_CTL_DEL, s.listen_fd, NULL)
        close(s.listen_fd)
        s.listen_fd = -1
    while c != NULL:
        if not c.dead:
            nghttp2_submit_goaway(c.session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c.session),
                                  NGHTTP2_NO_ERROR, NULL, 0)
            mark_dirty(s, c)
        c = c.next


# ---------------------------------------------------------------------------------------------
# nghttp2 callbacks (user_data: the Conn)

cdef int on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef Stream* st
    cdef Conn* conn = <Conn*>user_data
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    st = <Stream*>calloc(1, sizeof(Stream))
    if st == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    st.id = frame.hd.stream_id
    st.conn = conn
    st.token = make_token(conn, st.id)
    st.next = conn.streams
    if st.next != NULL:
        st.next.prev = st
    conn.streams = st
    nghttp2_session_set_stream_user_data(session, st.id, st)
    return 0


cdef bint skipped_header(const uint8_t* name, size_t namelen) noexcept nogil:
    """Headers the transport itself answers for, never passed on as the caller's metadata."""
    if namelen == 2 and memcmp(name, b"te", 2) == 0:
        return True
    if namelen == 10 and memcmp(name, b"user-agent", 10) == 0:
        return True
    if namelen == 12 and memcmp(name, b"content-type", 12) == 0:
        return True
    if namelen >= 5 and memcmp(name, b"grpc-", 5) == 0:
        return True         # grpc-timeout (read here), grpc-accept-encoding, grpc-encoding, ...
    return False


cdef void add_metadata(Stream* st, const uint8_t* name, size_t namelen, const uint8_t* value,
                       size_t valuelen) noexcept nogil:
    cdef size_t need = st.meta_len + 8 + namelen + valuelen
    cdef size_t cap
    cdef uint8_t* grown
    cdef uint32_t size
    if need > MAX_METADATA_BYTES:
        st.meta_overflow = True
        return
    if need > st.meta_cap:
        cap = st.meta_cap * 2 if st.meta_cap else 256
        while cap < need:
            cap *= 2
        grown = <uint8_t*>realloc(st.meta, cap)
        if grown == NULL:
            st.meta_overflow = True
            return
        st.meta = grown
        st.meta_cap = cap
    size = <uint32_t>namelen
    memcpy(st.meta + st.meta_len, &size, 4)
    memcpy(st.meta + st.meta_len + 4, name, namelen)
    st.meta_len += 4 + namelen
    size = <uint32_t>valuelen
    memcpy(st.meta + st.meta_len, &size, 4)
    memcpy(st.meta + st.meta_len + 4, value, valuelen)
    st.meta_len += 4 + valuelen


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
                st.kind = ROUTE_CANNED
                return 0
        for i in range(server.n_unary):
            if server.unary[i].path_len == valuelen and memcmp(server.unary[i].path, value, valuelen) == 0:
                st.kind = ROUTE_UNARY
                st.method = i
                return 0
        if server.forward_others and valuelen <= sizeof(st.path):
            st.kind = ROUTE_FORWARD
    elif namelen == 12 and memcmp(name, b"grpc-timeout", 12) == 0:
        timeout = parse_timeout_ns(value, valuelen)
        if timeout >= 0:
            st.deadline_ns = now_ns() + timeout
    elif namelen and name[0] != b':' and (st.kind == ROUTE_UNARY or st.kind == ROUTE_FORWARD) \
            and not skipped_header(name, namelen):
        add_metadata(st, name, namelen, value, valuelen)
    return 0


cdef int on_data_chunk_recv(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                            size_t length, void* user_data) noexcept nogil:
    """Follow the gRPC framing (1 flag byte, 4 length bytes, message); keep the message only when
    Python is to have it."""
    cdef Stream* st = <Stream*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef Conn* conn = <Conn*>user_data
    cdef Server* s = conn.server
    cdef size_t i = 0, take
    cdef uint64_t size
    cdef bint keep
    cdef Event* ev
    if st == NULL or st.answered:
        return 0
    keep = st.kind == ROUTE_UNARY or st.kind == ROUTE_FORWARD
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
            if st.prefix[0] != 0:
                fail_stream(s, st, "13", <const uint8_t*>"compressed request messages are not supported", 45)
                return 0
            if size > s.max_message:
                fail_stream(s, st, "8", <const uint8_t*>"request message larger than the limit", 37)
                # The rest of the request is read and dropped: a RST_STREAM(NO_ERROR) after the
                # answer (RFC 9113 8.1) makes grpc-core clients report INTERNAL instead of it.
                return 0
            if keep:
                if st.kind == ROUTE_UNARY and st.messages > 1:
                    fail_stream(s, st, "13", <const uint8_t*>"a unary call takes exactly one request message", 46)
                    return 0
                st.icap = size if size < FIRST_MESSAGE_CHUNK else FIRST_MESSAGE_CHUNK
                st.ibuf = <uint8_t*>malloc(st.icap if st.icap else 1)
                if st.ibuf == NULL:
                    fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
                    return 0
                st.ilen = 0
            st.message_left = size
            st.prefix_got = 0
            if size == 0:
                if keep:
                    message_complete(s, st)
                continue
        take = length - i
        if take > st.message_left:
            take = <size_t>st.message_left
        if keep:
            if s.max_buffered and s.buffered + take > s.max_buffered:
                drop_message(s, st)
                fail_stream(s, st, "8", <const uint8_t*>"the server holds too many request bytes; retry later", 52)
                return 0
            if st.ilen + take > st.icap and not grow_message(st, st.ilen + take, st.ilen + <size_t>st.message_left):
                drop_message(s, st)
                fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
                return 0
            memcpy(st.ibuf + st.ilen, data + i, take)
            st.ilen += take
            st.ibuf_counted += take
            s.buffered += take
        st.message_left -= take
        i += take
        if keep and st.message_left == 0:
            message_complete(s, st)
    return 0


cdef bint grow_message(Stream* st, size_t needed, size_t size) noexcept nogil:
    """Grow the message buffer to hold `needed` bytes: double it, or more when a chunk needs more,
    never past the message's `size`; False when out of memory."""
    cdef size_t cap = st.icap * 2
    cdef uint8_t* grown
    if cap < needed:
        cap = needed
    if cap > size:
        cap = size
    grown = <uint8_t*>realloc(st.ibuf, cap)
    if grown == NULL:
        return False
    st.ibuf = grown
    st.icap = cap
    return True


cdef void drop_message(Server* s, Stream* st) noexcept nogil:
    """Free the message being collected and stop counting its bytes."""
    free(st.ibuf)
    st.ibuf = NULL
    st.ilen = st.icap = 0
    s.buffered -= st.ibuf_counted
    st.ibuf_counted = 0


cdef void message_complete(Server* s, Stream* st) noexcept nogil:
    """A whole message has arrived: a forwarded stream's goes to Python now; a unary one waits for END_STREAM."""
    cdef Event* ev
    if st.kind != ROUTE_FORWARD or not st.handed:
        return
    ev = new_event(s, EV_MESSAGE, st)
    if ev == NULL:
        fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
        return
    ev.body = st.ibuf
    ev.body_len = st.ilen
    st.ibuf = NULL
    st.ilen = st.icap = 0
    s.buffered -= st.ibuf_counted
    st.ibuf_counted = 0


cdef void stream_open(Server* s, Stream* st) noexcept nogil:
    """A forwarded stream's headers are in: Python opens its call now (messages follow)."""
    cdef Event* ev
    ev = new_event(s, EV_OPEN, st)
    if ev == NULL:
        fail_stream(s, st, "8", <const uint8_t*>"out of memory", 13)
        return
    ev.body = <uint8_t*>malloc(st.path_len if st.path_len else 1)
    if ev.body != NULL:
        memcpy(ev.body, st.path, st.path_len)
        ev.body_len = st.path_len
    ev.meta = st.meta
    ev.meta_len = st.meta_len
    st.meta = NULL
    st.meta_len = st.meta_cap = 0
    hand_over(s, st)


cdef int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil:
    cdef Stream* st
    cdef Conn* conn = <Conn*>user_data
    cdef Server* s = conn.server
    if conn.handshake_deadline_ns:
        handshake_done(s, conn)     # nghttp2 delivers no frame before a good preface
    if frame.hd.type == NGHTTP2_DATA or frame.hd.type == NGHTTP2_HEADERS:
        st = <Stream*>nghttp2_session_get_stream_user_data(session, frame.hd.stream_id)
        if st == NULL or st.answered:
            return 0
        if frame.hd.type == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            if st.meta_overflow:
                fail_stream(s, st, "8", <const uint8_t*>"request metadata larger than the limit", 38)
                return 0
            if st.kind == ROUTE_FORWARD:
                if s.draining:
                    fail_stream(s, st, "14", <const uint8_t*>"the server is shutting down", 27)
                    return 0
                stream_open(s, st)
        if frame.hd.flags & NGHTTP2_FLAG_END_STREAM and not st.answered:
            request_complete(s, conn, st)
    elif frame.hd.type == NGHTTP2_RST_STREAM:
        s.resets += 1
    return 0


cdef int on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                         void* user_data) noexcept nogil:
    cdef Stream* st = <Stream*>nghttp2_session_get_stream_user_data(session, stream_id)
    cdef Conn* conn = <Conn*>user_data
    if st != NULL:
        if st.handed:       # the client went (RST_STREAM) before Python answered
            new_event(conn.server, EV_CANCEL, st)
        nghttp2_session_set_stream_user_data(session, stream_id, NULL)
        stream_free(st)
    return 0


# ---------------------------------------------------------------------------------------------
# connections and the loop

cdef void mark_dirty(Server* s, Conn* c) noexcept nogil:
    if not c.dirty and append_pointer(<void***>&s.dirty, &s.n_dirty, &s.dirty_cap, c):
        c.dirty = True


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
    if not slot_take(s, c):
        free(c)
        close(fd)
        return
    if nghttp2_session_server_new2(&c.session, s.callbacks, c, s.option) != 0:
        slot_give_back(s, c)
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
        slot_give_back(s, c)
        free(c)
        close(fd)
        return
    c.next = s.conns
    if s.conns != NULL:
        s.conns.prev = c
    s.conns = c
    if s.handshake_timeout_ns:
        c.handshake_deadline_ns = now_ns() + s.handshake_timeout_ns
        c.hs_prev = s.hs_tail
        if s.hs_tail != NULL:
            s.hs_tail.hs_next = c
        else:
            s.hs_head = c
        s.hs_tail = c
    s.accepted += 1
    s.open_conns += 1
    mark_dirty(s, c)    # our SETTINGS go out at the end of this turn


cdef void stream_free(Stream* st) noexcept nogil:
    cdef Server* s = st.conn.server
    deadline_remove(s, st)
    s.buffered -= st.ibuf_counted
    if st.prev != NULL:
        st.prev.next = st.next
    else:
        st.conn.streams = st.next
    if st.next != NULL:
        st.next.prev = st.prev
    free(st.ibuf)
    free(st.meta)
    free(st.obuf)
    free(st.fmessage)
    free(st.fdetails)
    free(st)


cdef void conn_free(Server* s, Conn* c) noexcept nogil:
    """Close the socket and free everything of a connection; Python hears of its streams it holds."""
    handshake_done(s, c)
    close(c.fd)
    # nghttp2_session_del does not call on_stream_close: the streams' user data is freed here
    nghttp2_session_del(c.session)
    while c.streams != NULL:
        if c.streams.handed:
            new_event(s, EV_CANCEL, c.streams)
        stream_free(c.streams)
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        s.conns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    slot_give_back(s, c)
    free(c.out.data)
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
    cdef ssize_t session_error
    cdef epoll_event ev
    if c.dead:
        return False
    if write_session(c.session, &c.out, c.fd, SEND_HIGH_WATER, &session_error) != WRITE_DONE:
        return False
    if write_pending(&c.out) != c.want_out:
        c.want_out = write_pending(&c.out)
        ev.events = EPOLLIN | EPOLLOUT if c.want_out else EPOLLIN
        ev.data.ptr = c
        epoll_ctl(s.epoll_fd, EPOLL_CTL_MOD, c.fd, &ev)
    if not write_pending(&c.out) and not nghttp2_session_want_read(c.session) \
            and not nghttp2_session_want_write(c.session):
        return False
    return True


cdef void flush_dirty(Server* s) noexcept nogil:
    cdef int i
    cdef Conn* c
    # conn_free may add to the list (none today: it only frees), so walk by index on the live count
    i = 0
    while i < s.n_dirty:
        c = s.dirty[i]
        c.dirty = False
        if not conn_flush(s, c):
            conn_free(s, c)
        i += 1
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
    publish_events(s)


cdef int run_loop(Server* s) noexcept nogil:
    """Serve until stop() (LOOP_STOPPED), a signal (LOOP_SIGNAL: check it, then call again) or an error."""
    cdef int rc
    while not s.stopping:
        rc = run_turn(s, loop_timeout_ms(s))
        if rc != 0:
            return rc
    shutdown_all(s)
    return LOOP_STOPPED


cdef int run_turn(Server* s, int timeout_ms) noexcept nogil:
    """One turn of the loop: wait up to `timeout_ms` for socket events (-2: look for none), read,
    apply Python's answers, expire deadlines, write, publish. 0, or LOOP_SIGNAL / LOOP_ERROR."""
    cdef epoll_event events[MAX_EVENTS]
    cdef int n = 0, i, fd
    cdef void* tag
    cdef Conn* c
    cdef uint64_t counter
    if s.inline:
        drain_commands(s)       # inline, the answers given since the last turn wake nobody: take them now
    if timeout_ms >= -1:
        n = epoll_wait(s.epoll_fd, events, MAX_EVENTS, timeout_ms)
        if n < 0:
            if errno == EINTR:
                return 0 if s.inline else LOOP_SIGNAL
            return LOOP_ERROR
    for i in range(n):
        tag = events[i].data.ptr
        if tag == &s.listen_fd:
            while s.listen_fd >= 0:
                fd = accept4(s.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                if fd < 0:
                    break
                conn_open(s, fd)
        elif tag == &s.stop_fd:
            s.stopping = True
        elif tag == &s.commands:
            drain_commands(s)
        elif tag == &s.timer_fd:
            read(s.timer_fd, &counter, sizeof(counter))
            s.timer_armed_ns = 0
        else:
            c = <Conn*>tag
            if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                conn_read(s, c)
            if events[i].events & EPOLLOUT:
                mark_dirty(s, c)
    expire_deadlines(s)
    expire_handshakes(s)
    flush_dirty(s)
    publish_events(s)
    if s.inline:
        arm_timer(s)
    return 0


cdef void arm_timer(Server* s) noexcept nogil:
    """Inline: the timerfd fires by the nearest deadline or handshake timeout (`_h2io.arm_timer_at`)."""
    if s.n_deadlines == 0 and s.hs_head == NULL:
        return
    if s.n_deadlines == 0 or (s.hs_head != NULL and s.hs_head.handshake_deadline_ns < s.deadlines[0].at_ns):
        arm_timer_at(s.timer_fd, &s.timer_armed_ns, s.hs_head.handshake_deadline_ns)
    else:
        arm_timer_at(s.timer_fd, &s.timer_armed_ns, s.deadlines[0].at_ns)


# ---------------------------------------------------------------------------------------------
# the Python API

EVENT_REQUEST = EV_REQUEST
EVENT_OPEN = EV_OPEN
EVENT_MESSAGE = EV_MESSAGE
EVENT_HALF_CLOSE = EV_HALF_CLOSE
EVENT_CANCEL = EV_CANCEL


cdef class H2Server:
    """A gRPC server on libnghttp2 and one epoll loop that runs with the GIL released.

    Binds ``host:port`` at once (port 0: a free one, see ``port``; ``reuse_port``: SO_REUSEPORT, for
    several processes on one port). Add canned answers and unary paths, then call ``serve_forever()``
    in one thread; ``stop()`` from any thread or a signal handler ends it. Requests for Python come
    out of ``take()`` when ``events_fd`` is readable; ``reply``/``fail``/``send``/``finish`` answer
    them from any thread. With ``inline=True`` there is no loop thread: the thread that calls
    ``poll()`` (when ``fileno()`` is readable) gets the requests from it and answers them, and its
    next ``poll()`` writes the answers (nothing wakes a loop thread: there is none).
    """

    cdef Server* srv
    cdef int _port
    cdef bint serving
    cdef bint finished
    cdef list _unary_paths

    def __cinit__(self):
        self.srv = <Server*>calloc(1, sizeof(Server))
        if self.srv == NULL:
            raise MemoryError()
        self.srv.listen_fd = self.srv.epoll_fd = self.srv.stop_fd = self.srv.timer_fd = -1
        self.srv.events.fd = self.srv.commands.fd = -1
        self._unary_paths = []

    def __init__(self, str host="127.0.0.1", int port=0, *, max_message_bytes=MAX_MESSAGE_BYTES, int backlog=1024,
                 bint forward_others=False, bint reuse_port=False, max_buffered_bytes=MAX_BUFFERED_BYTES,
                 double handshake_timeout_s=HANDSHAKE_TIMEOUT_S, bint inline=False):
        cdef Server* s = self.srv
        cdef epoll_event ev
        if not 0 <= max_message_bytes <= 0xFFFFFFFF:
            raise ValueError("max_message_bytes must be in [0, 2**32)")
        if not 0 <= max_buffered_bytes < 2 ** 63:
            raise ValueError("max_buffered_bytes must be in [0, 2**63) (0: no bound)")
        if not 0 <= handshake_timeout_s <= 86400:
            raise ValueError("handshake_timeout_s must be 0-86400 seconds (0: no bound)")
        family = pysocket.AF_INET6 if ":" in host else pysocket.AF_INET
        sock = pysocket.socket(family, pysocket.SOCK_STREAM)
        try:
            sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
            self._port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        s.listen_fd = sock.detach()
        s.max_message = max_message_bytes
        s.max_buffered = max_buffered_bytes
        s.handshake_timeout_ns = <int64_t>(handshake_timeout_s * 1e9)
        s.forward_others = forward_others
        s.rbuf_size = READ_BUFFER_BYTES
        s.rbuf = <uint8_t*>malloc(s.rbuf_size)
        s.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
        s.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if s.rbuf == NULL or s.epoll_fd < 0 or s.stop_fd < 0:
            raise OSError(errno, "cannot set up the epoll loop")
        if mailbox_init(&s.events, sizeof(Event)) != 0 or mailbox_init(&s.commands, sizeof(Command)) != 0:
            raise OSError(errno, "cannot set up the mailboxes")
        ev.events = EPOLLIN
        ev.data.ptr = &s.listen_fd
        if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.listen_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        ev.data.ptr = &s.stop_fd
        if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.stop_fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        ev.data.ptr = &s.commands
        if epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.commands.fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl")
        if inline:
            s.inline = s.events.quiet = s.commands.quiet = True
            s.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            ev.data.ptr = &s.timer_fd
            if s.timer_fd < 0 or epoll_ctl(s.epoll_fd, EPOLL_CTL_ADD, s.timer_fd, &ev) != 0:
                raise OSError(errno, "cannot set up the deadline timer")
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
        cdef size_t n, k
        cdef Event* events
        cdef Command* commands
        if s == NULL:
            return
        while s.conns != NULL:
            conn_free(s, s.conns)
        for fd in (s.listen_fd, s.epoll_fd, s.stop_fd, s.timer_fd):
            if fd >= 0:
                close(fd)
        for i in range(s.n_canned):
            free_canned(&s.canned[i])
        free(s.canned)
        for i in range(s.n_unary):
            free(s.unary[i].path)
        free(s.unary)
        for i in range(s.n_local):
            free(s.local[i].body)
            free(s.local[i].meta)
        free(s.local)
        if s.events.fd >= 0:
            events = <Event*>mailbox_take(&s.events, &n)
            for k in range(n):
                free(events[k].body)
                free(events[k].meta)
            free(events)
            close(s.events.fd)
            pthread_mutex_destroy(&s.events.lock)
        if s.commands.fd >= 0:
            commands = <Command*>mailbox_take(&s.commands, &n)
            for k in range(n):
                free_command(&commands[k])
            free(commands)
            close(s.commands.fd)
            pthread_mutex_destroy(&s.commands.lock)
        free(s.deadlines)
        free(s.slots)
        free(s.free_slots)
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
        raw_path = _check_path(path)
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
                encoded = _percent_encoded(message)
                entry.message = dup_bytes(encoded)
                entry.message_len = len(encoded)
            if details:
                encoded = _base64(details)
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

    def add_unary(self, path) -> int:
        """Hand complete unary requests on ``path`` to Python (``take()``); returns the path's method
        index, the third item of its EVENT_REQUEST tuples. Only before ``serve_forever``."""
        cdef UnaryPath* grown
        cdef Server* s = self.srv
        if self.serving or self.finished:
            raise RuntimeError("add_unary must come before serve_forever")
        raw_path = _check_path(path)
        if raw_path in self._unary_paths:
            return self._unary_paths.index(raw_path)
        grown = <UnaryPath*>realloc(s.unary, (s.n_unary + 1) * sizeof(UnaryPath))
        if grown == NULL:
            raise MemoryError()
        s.unary = grown
        s.unary[s.n_unary].path = dup_bytes(raw_path)
        s.unary[s.n_unary].path_len = len(raw_path)
        s.n_unary += 1
        self._unary_paths.append(raw_path)
        return s.n_unary - 1

    @property
    def events_fd(self) -> int:
        """An eventfd that is readable while requests for Python wait in ``take()``."""
        return self.srv.events.fd

    def take(self) -> list:
        """Every event waiting for Python, oldest first, as 6-tuples
        ``(kind, token, method index or path, message, timeout_s or None, metadata)``;
        see the EVENT_* constants. Metadata is a tuple of ``(name, value)`` pairs as grpc gives them
        (``-bin`` values base64-decoded to bytes, others str)."""
        cdef size_t n = 0, i
        cdef Event* events
        cdef Event* ev
        cdef int64_t now
        with nogil:
            events = <Event*>mailbox_take(&self.srv.events, &n)
        if n == 0:
            free(events)
            return []
        now = now_ns()
        taken = []
        try:
            for i in range(n):
                ev = &events[i]
                timeout = None if ev.deadline_ns == 0 else max(ev.deadline_ns - now, 0) / 1e9
                token = (<object>ev.serial << 47) | <object>ev.token
                if ev.kind == EV_REQUEST:
                    taken.append((EV_REQUEST, token, ev.method, ev.body[:ev.body_len] if ev.body_len else b"",
                                  timeout, _metadata(ev.meta, ev.meta_len)))
                elif ev.kind == EV_OPEN:
                    path = ev.body[:ev.body_len].decode("ascii", "replace") if ev.body != NULL else ""
                    taken.append((EV_OPEN, token, path, None, timeout, _metadata(ev.meta, ev.meta_len)))
                elif ev.kind == EV_MESSAGE:
                    taken.append((EV_MESSAGE, token, None, ev.body[:ev.body_len] if ev.body_len else b"", None, ()))
                else:
                    taken.append((ev.kind, token, None, None, None, ()))
        finally:
            for i in range(n):
                free(events[i].body)
                free(events[i].meta)
            free(events)
        return taken

    def reply(self, token, message):
        """Answer a unary request: the message bytes, then ``grpc-status: 0``."""
        self._answer(token, message, True, 0, "", b"")

    def fail(self, token, int status, str message="", details=b""):
        """End a stream with gRPC error ``status`` (1-16), its ``message`` and ``details`` (the
        serialised google.rpc.Status for grpc-status-details-bin)."""
        if not 1 <= status <= 16:
            raise ValueError("status must be a gRPC error code, 1 to 16")
        self._answer(token, None, True, status, message, details)

    def send(self, token, message):
        """Send one message on a stream (headers first, the first time)."""
        self._answer(token, message, False, 0, "", b"")

    def finish(self, token, int status=0, str message="", details=b""):
        """End a stream with ``status`` (0-16) after the messages sent."""
        if not 0 <= status <= 16:
            raise ValueError("status must be a gRPC status code, 0 to 16")
        self._answer(token, None, True, status, message, details)

    cdef _answer(self, token, message, bint finish, int status, str text, details):
        cdef Command cmd
        cdef const uint8_t[::1] view
        cdef size_t size
        cdef bytes encoded
        memset(&cmd, 0, sizeof(Command))
        cmd.kind = CMD_ANSWER
        if token < 0 or token >> 111:
            raise ValueError("not a token of this server")
        cmd.serial = token >> 47
        cmd.token = token & 0x7FFFFFFFFFFF
        cmd.finish = finish
        try:
            if message is not None:
                view = message
                size = view.shape[0]
                if size > 0xFFFFFFFF:
                    raise ValueError("message too large for one gRPC message")
                cmd.data = <uint8_t*>malloc(size + 5)
                if cmd.data == NULL:
                    raise MemoryError()
                cmd.data[0] = 0
                cmd.data[1] = (size >> 24) & 0xFF
                cmd.data[2] = (size >> 16) & 0xFF
                cmd.data[3] = (size >> 8) & 0xFF
                cmd.data[4] = size & 0xFF
                if size:
                    memcpy(cmd.data + 5, &view[0], size)
                cmd.data_len = size + 5
            if finish:
                encoded = str(status).encode()
                memcpy(cmd.status, <const char*>encoded, len(encoded) + 1)
                if text:
                    encoded = _percent_encoded(text)
                    cmd.message = dup_bytes(encoded)
                    cmd.message_len = len(encoded)
                if details:
                    encoded = _base64(details)
                    cmd.details = dup_bytes(encoded)
                    cmd.details_len = len(encoded)
            with nogil:
                if not mailbox_put(&self.srv.commands, &cmd, 1):
                    free_command(&cmd)
        except BaseException:
            free_command(&cmd)
            raise

    def shutdown(self):
        """Begin the drain (any thread): stop accepting, GOAWAY naming the last stream taken; open
        streams go on until answered, then each connection closes. ``stop()`` still ends the loop."""
        cdef Command cmd
        memset(&cmd, 0, sizeof(Command))
        cmd.kind = CMD_SHUTDOWN
        with nogil:
            mailbox_put(&self.srv.commands, &cmd, 1)

    def serve_forever(self):
        """Serve on this thread, with the GIL released, until ``stop()``; then GOAWAY to every
        connection, close them and the listening socket. A signal's Python handler runs while it
        serves (main thread only); an exception from it stops the server and is raised here. Serves once.
        """
        cdef int rc
        if self.srv.inline:
            raise RuntimeError("an inline server is run by poll(), not serve_forever()")
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
        """End ``serve_forever`` (from any thread or a signal handler); safe to call more than once.
        Inline, end it now (from the thread that polls): GOAWAY to every connection, close them and
        the listening socket; the cancel events of calls still open come out of the next ``take()``."""
        cdef uint64_t one = 1
        if self.srv.inline:
            if not self.finished:
                self.finished = True
                self.srv.stopping = True
                shutdown_all(self.srv)
            return
        if self.srv.stop_fd >= 0:
            write(self.srv.stop_fd, &one, sizeof(one))

    def poll(self, bint events=True):
        """Inline mode: run one turn of the loop on this thread (no waiting, the GIL held) and
        return what it handed to Python, as ``take()`` does. For a caller whose own event loop
        watches ``fileno()`` and calls this when it is readable, and once after answering (then
        ``events=False`` skips looking for socket events, one syscall less): no thread of the
        server's own and no eventfd between threads. Deadlines and handshake timeouts are kept with
        a timerfd in the epoll set."""
        cdef int rc
        if not self.srv.inline:
            raise RuntimeError("poll() is for a server made with inline=True")
        if self.finished:
            return self.take()
        # The GIL is kept: a turn takes microseconds, and giving it up could hand it to another
        # thread for up to a switch interval before this one (the caller's event loop) gets it back.
        rc = run_turn(self.srv, 0 if events else -2)
        if rc == LOOP_ERROR:
            raise OSError(errno, "epoll_wait failed")
        if self.srv.stopping and not self.finished:
            self.finished = True
            shutdown_all(self.srv)
        return self.take()

    def fileno(self):
        """The loop's epoll fd: readable when a turn of ``poll()`` has work (inline mode)."""
        return self.srv.epoll_fd

    @property
    def port(self):
        """The bound TCP port."""
        return self._port

    @property
    def stats(self):
        """Counters since start: connections accepted and open, requests answered OK, gRPC errors
        answered, RST_STREAM frames received, streams handed to Python, deadlines the loop enforced;
        now: deadlines watched (calls waiting on Python with one) and request bytes held."""
        cdef Server* s = self.srv
        # plain counter reads: the serving thread may be changing them right now
        return {"connections": s.accepted, "open_connections": s.open_conns, "requests": s.requests,
                "errors": s.errors, "resets": s.resets, "handed_off": s.handed_off,
                "deadline_exceeded": s.deadline_exceeded, "deadlines_watched": s.n_deadlines,
                "handshake_timeouts": s.handshake_timeouts,
                "buffered_bytes": s.buffered}


cdef bytes _check_path(path):
    raw_path = path.encode() if isinstance(path, str) else bytes(path)
    if not raw_path.startswith(b"/"):
        raise ValueError("path must start with '/'")
    if len(raw_path) > 127:
        raise ValueError("path must be at most 127 bytes")
    return raw_path


cdef bytes _percent_encoded(str message):
    raw = message.encode()
    out = bytearray(3 * len(raw))
    return bytes(out[:percent_encode_bytes(raw, out)])


cdef bytes _base64(details):
    return binascii.b2a_base64(bytes(details), newline=False).rstrip(b"=")


cdef tuple _metadata(const uint8_t* meta, size_t size):
    """The caller's metadata from the loop's packed form, as grpc's Python API gives it."""
    cdef size_t off = 0
    cdef uint32_t n
    if size == 0:
        return ()
    pairs = []
    while off + 4 <= size:
        memcpy(&n, meta + off, 4)
        name = meta[off + 4:off + 4 + n].decode("latin-1")
        off += 4 + n
        memcpy(&n, meta + off, 4)
        value = meta[off + 4:off + 4 + n]
        off += 4 + n
        if name.endswith("-bin"):
            try:
                value = binascii.a2b_base64(value + b"=" * ((4 - len(value) % 4) % 4))
            except binascii.Error:
                continue    # not base64: dropped, as grpc-core drops it
            pairs.append((name, value))
        else:
            pairs.append((name, value.decode("latin-1")))
    return tuple(pairs)


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
